// Small pure helpers for the figures a player reports (and the tests print).

/** The p-th percentile (nearest rank) of an ascending array, or null when it is empty. */
export function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** `x` rounded to `digits` decimals; null for null, undefined, NaN and infinities. */
export function round(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The last `capacity` values of a series, and how many were ever added (to read them once each). */
export class Samples {
  constructor(capacity) {
    this.capacity = capacity;
    this.values = [];
    this.count = 0;
  }

  add(value) {
    this.values.push(value);
    this.count++;
    if (this.values.length > this.capacity) this.values.shift();
  }

  /** {p50, p95, n} of the values kept, null figures when there are none. */
  summary() {
    const sorted = this.values.slice().sort((a, b) => a - b);
    return { p50: percentile(sorted, 50), p95: percentile(sorted, 95), n: sorted.length };
  }

  /** The p-th percentile of the values kept, or null. */
  percentile(p) {
    return percentile(this.values.slice().sort((a, b) => a - b), p);
  }

  /** The values added after the first `mark` ever added (oldest first, those still kept) and the next mark. */
  since(mark = 0) {
    const first = this.count - this.values.length;
    return { values: this.values.slice(Math.max(0, mark - first)), mark: this.count };
  }
}
