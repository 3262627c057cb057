#!/usr/bin/env bash
# The broker fan-out figures of docs/BENCHMARKS.md: `mqtt-video bench --spawn` on the live GStreamer RTSP test
# source at 1280x720@30, 3.3 Mbit/s (noise: the ball pattern would compress to 0.5 Mbit/s), copy mode, with protocol 2 viewers (1, 100, 500; VIEWERS to change) and,
# for reference, protocol 1 viewers (1 and 100). Each row prints the server's upload (bytes written per second,
# from /proc) and its ratio to the same protocol's 1-viewer row, measured in the same run. The JSON and text of
# every row land in $OUT (target/bench-fanout); SECONDS_PER_ROW (default 15) sets how long each viewer receives.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_ROW:-15}
out=${OUT:-target/bench-fanout}
viewers=${VIEWERS:-"1 100 500"}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/mqtt-video

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
/usr/bin/python3 tests/support/rtsp_server.py --port 8656 --width 1280 --height 720 --bitrate 3300 --pattern snow >"$out/rtsp.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$out/rtsp.log" && break; sleep 0.1; done
grep -q READY "$out/rtsp.log" || { echo "the RTSP test source did not start:" >&2; cat "$out/rtsp.log" >&2; exit 1; }

rows=()
for n in $viewers; do rows+=("2 $n"); done
rows+=("1 1" "1 100")
for row in "${rows[@]}"; do
  read -r protocol n <<<"$row"
  name="v$protocol-$n"
  args=(bench --spawn --mode copy --url "rtsp://127.0.0.1:8656/live" --viewers "$n" --seconds "$secs" --protocol "$protocol")
  echo "+ mqtt-video ${args[*]}"
  "$bin" "${args[@]}" --json "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.err" || echo "  (row failed: see $out/$name.txt)"
done

python3 - "$out" "$viewers" <<'EOF'
import json, pathlib, sys
out, counts = pathlib.Path(sys.argv[1]), [int(n) for n in sys.argv[2].split()]
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
def f(x, d=0):
    return "-" if x is None else f"{x:.{d}f}"
print("| protocol | viewers | server upload (kbit/s) | x one viewer | per viewer received (kbit/s, p50) | gaps | latency p50 / p95 (ms) | server CPU % | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for protocol, ns in ((2, counts), (1, [1, 100])):
    one = load(f"v{protocol}-1")
    base = one and one["server"].get("written_kbps")
    for n in ns:
        r = load(f"v{protocol}-{n}")
        if r is None:
            print(f"| {protocol} | {n} | failed |"); continue
        up = r["server"].get("written_kbps")
        lat = r["latency"] or {}
        ratio = up / base if up and base else None
        print(f"| {protocol} | {n} | {f(up)} | {f(ratio, 2)} | {f((r['bitrate_kbps'] or {}).get('p50'))} | {r['gaps']} | "
              f"{f(lat.get('p50'), 1)} / {f(lat.get('p95'), 1)} | {f(r['server']['cpu_percent'], 1)} | {len(r['errors'])} |")
EOF
