#!/usr/bin/env bash
# Every check a submission must pass: formatting, clippy with warnings as errors, and all tests (unit,
# integration against real media and a live RTSP server, lifecycle/memory). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test
