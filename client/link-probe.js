// How fast the page's link carries a burst: the gateway's /probe sends N bytes back to back, and the time the
// second half of them took to arrive is the link's rate now, less what the stream played takes of it. A page
// on a low rendition asks this before switching up (abr.js), so that finding out costs a few hundred ms of
// extra delay on the picture, never the higher rendition's whole GOP queued in front of it.
//
// The timing is pure (probeRate, over the chunks' arrival times); probeLink does the fetch.

/** The probe's URL beside the broker's WebSocket on the gateway, or null for a broker elsewhere (no probe). */
export function probeUrl(brokerUrl, bytes, nonce) {
  let u;
  try {
    u = new URL(brokerUrl);
  } catch {
    return null;
  }
  const scheme = { "ws:": "http:", "wss:": "https:" }[u.protocol];
  if (!scheme) return null;
  return `${scheme}//${u.host}/probe?bytes=${Math.round(bytes)}&t=${encodeURIComponent(nonce)}`;
}

/** A second half shorter than this is the clock's noise: the whole transfer then gives a lower bound, ms. */
const MIN_SPAN_MS = 5;

/**
 * The rate the chunks [{at (ms), bytes}] arrived at, kbit/s, from a request sent at `startedAt`: the bytes
 * after the chunk that crossed half of them, over the time they took (what a token bucket's burst and TCP's
 * slow start let through at first is left out). When that is too short to time, the whole transfer from the
 * request on, a lower bound: {kbps, bound: true}. Null without bytes.
 */
export function probeRate(chunks, startedAt) {
  const total = chunks.reduce((n, c) => n + c.bytes, 0);
  if (!total) return null;
  let seen = 0;
  let half = null;
  for (const c of chunks) {
    seen += c.bytes;
    if (seen >= total / 2) {
      half = { at: c.at, after: total - seen };
      break;
    }
  }
  const end = chunks.at(-1).at;
  if (half && half.after >= total / 4 && end - half.at >= MIN_SPAN_MS) {
    return { kbps: (half.after * 8) / (end - half.at), bound: false };
  }
  return { kbps: (total * 8) / Math.max(end - startedAt, MIN_SPAN_MS), bound: true };
}

/**
 * Fetches `url` and times it: {kbps, bound, bytes, ms} or {error, timedOut}. `now` is the clock (performance.now),
 * `fetchFn` the fetch; gives up after timeoutMs.
 */
export async function probeLink(url, { timeoutMs = 5000, now = () => performance.now(), fetchFn = fetch } = {}) {
  const startedAt = now();
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const response = await fetchFn(url, { cache: "no-store", signal: abort.signal });
    if (!response.ok || !response.body) return { error: `the probe got HTTP ${response.status}` };
    const reader = response.body.getReader();
    const chunks = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push({ at: now(), bytes: value.byteLength });
    }
    const rate = probeRate(chunks, startedAt);
    if (!rate) return { error: "the probe brought no bytes" };
    return { ...rate, bytes: chunks.reduce((n, c) => n + c.bytes, 0), ms: now() - startedAt };
  } catch (e) {
    if (abort.signal.aborted) return { error: `the probe took over ${timeoutMs} ms`, timedOut: true };
    return { error: `the probe failed: ${e.message}` };
  } finally {
    clearTimeout(timer);
  }
}
