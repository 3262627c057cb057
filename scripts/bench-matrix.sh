#!/usr/bin/env bash
# The figures of docs/BENCHMARKS.md: `mqtt-video bench --spawn` on the live GStreamer RTSP test source at
# 640x360@30 and 1280x720@30, copy and transcode, 1/10/50 viewers; the 1-viewer rows also run the ffmpeg CLI
# reference. Each row's command is printed before it runs; the JSON, text and SVG of every row land in
# $OUT (target/bench-matrix). SECONDS_PER_ROW (default 20) sets how long each viewer receives.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_ROW:-20}
out=${OUT:-target/bench-matrix}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/mqtt-video

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_source() { # port width height kbit/s
  /usr/bin/python3 tests/support/rtsp_server.py --port "$1" --width "$2" --height "$3" --bitrate "$4" >"$out/rtsp-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q READY "$out/rtsp-$1.log" && return 0; sleep 0.1; done
  echo "the RTSP test source on port $1 did not start:" >&2; cat "$out/rtsp-$1.log" >&2; exit 1
}
start_source 8654 640 360 1500
start_source 8655 1280 720 4000

for row in "360p 8654" "720p 8655"; do
  read -r res port <<<"$row"
  for mode in copy transcode; do
    for viewers in 1 10 50; do
      name="$res-$mode-$viewers"
      args=(bench --spawn --mode "$mode" --url "rtsp://127.0.0.1:$port/live" --viewers "$viewers" --seconds "$secs")
      if [ "$viewers" = 1 ]; then args+=(--compare-ffmpeg --plot "$out/$name.svg"); fi
      echo "+ mqtt-video ${args[*]}"
      "$bin" "${args[@]}" --json "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.err" || echo "  (row failed: see $out/$name.txt)"
    done
  done
done

python3 - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def f(x, d=0):
    return "-" if x is None else f"{x:.{d}f}"
rows, refs = [], []
for res in ("360p", "720p"):
    for mode in ("copy", "transcode"):
        for n in (1, 10, 50):
            p = out / f"{res}-{mode}-{n}.json"
            if not p.exists():
                rows.append(f"| {res} | {mode} | {n} | failed |"); continue
            r = json.loads(p.read_text())
            lat, warm, srv = r["latency"] or {}, r["warm"]["first_fragment"] or {}, r["server"]
            br = (r["bitrate_kbps"] or {}).get("p50")
            rows.append(f"| {res} | {mode} | {n} | {f(r['first_play']['first_fragment_ms'])} | {f(warm.get('p50'), 1)} | "
                        f"{f(lat.get('p50'), 1)} / {f(lat.get('p95'), 1)} / {f(lat.get('p99'), 1)} / {f(lat.get('max'), 1)} | "
                        f"{f(br)} | {r['gaps']} | {f(srv['cpu_percent'], 1)} | {f((srv['rss_kib_max'] or 0) / 1024)} | {len(r['errors'])} |")
            ff = r.get("ffmpeg")
            if ff:
                fl = ff["latency"] or {}
                refs.append(f"| {res} | {mode} | {f(r['first_play']['first_fragment_ms'])} / {f(ff['first_fragment_ms'])} | "
                            f"{f(lat.get('p50'), 1)} / {f(fl.get('p50'), 1)} | {f(lat.get('p95'), 1)} / {f(fl.get('p95'), 1)} | "
                            f"{f(srv['cpu_percent'], 1)} / {f(ff['cpu_percent'], 1)} |")
print("\n| source | mode | viewers | first fragment, cold (ms) | warm joiner (ms) | latency p50 / p95 / p99 / max (ms) | kbit/s per viewer | gaps | server CPU % | RSS MiB | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
print("\n| source | mode | first fragment (ms) ours / ffmpeg | latency p50 (ms) ours / ffmpeg | p95 ours / ffmpeg | CPU % ours / ffmpeg |")
print("|---|---|---|---|---|---|")
print("\n".join(refs))
EOF
