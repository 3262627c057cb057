#!/usr/bin/env bash
# The renditions figures of docs/BENCHMARKS.md: `mqtt-video bench --spawn` on builtin://testsrc-720p
# (1280x720@30) transcoded, with a rendition `low` (360p, 600 kbit/s), and 1 or 50 protocol 2 viewers of
# main or of low. The server's CPU of each row is compared with the 1-viewer row of the same rendition, and
# low's cost with main's, all measured in the same run: viewers must cost no encoding (the broker fans out),
# and low must cost nothing while nobody watches it. Rows' JSON and text land in $OUT (target/bench-renditions);
# SECONDS_PER_ROW (default 15) sets how long each viewer receives.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_ROW:-15}
out=${OUT:-target/bench-renditions}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/mqtt-video

for row in "main 1" "main 50" "low 1" "low 50"; do
  read -r rendition n <<<"$row"
  args=(bench --spawn --mode transcode --url builtin://testsrc-720p --viewers "$n" --seconds "$secs"
        --spawn-rendition low:360:600)
  [ "$rendition" = main ] || args+=(--rendition "$rendition")
  echo "+ mqtt-video ${args[*]}"
  "$bin" "${args[@]}" --json "$out/$rendition-$n.json" >"$out/$rendition-$n.txt" 2>"$out/$rendition-$n.err" \
    || echo "  (row failed: see $out/$rendition-$n.txt)"
done

python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
def f(x, d=0):
    return "-" if x is None else f"{x:.{d}f}"
cpu = lambda r: r and r["server"].get("cpu_percent")
print("| rendition | viewers | server CPU % of a core | x 1 viewer | x main, same viewers | per viewer (kbit/s, p50) | gaps | latency p50 / p95 (ms) | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for rendition in ("main", "low"):
    for n in (1, 50):
        r = load(f"{rendition}-{n}")
        if r is None:
            print(f"| {rendition} | {n} | failed |"); continue
        one, main = cpu(load(f"{rendition}-1")), cpu(load(f"main-{n}"))
        c = cpu(r)
        lat = r["latency"] or {}
        print(f"| {rendition} | {n} | {f(c, 1)} | {f(c / one if c and one else None, 2)} | {f(c / main if c and main else None, 2)} | "
              f"{f((r['bitrate_kbps'] or {}).get('p50'))} | {r['gaps']} | {f(lat.get('p50'), 1)} / {f(lat.get('p95'), 1)} | {len(r['errors'])} |")
PY
