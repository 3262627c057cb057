#!/usr/bin/env bash
# The main job: set up, build, and run the built-in test source through the whole in-process pipeline.
# Writes out/demo/ (init segment + fragments) and out/demo.mp4, which any browser or player can open.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
rm -rf out/demo
./target/release/mqtt-video probe "${1:-builtin://testsrc}" --seconds "${SECONDS_TO_RUN:-10}" --realtime --out out/demo
cat out/demo/init.mp4 out/demo/*.m4s > out/demo.mp4
echo
echo "Open $(pwd)/out/demo.mp4 in a browser or any video player: it is the stream exactly as viewers receive it."
