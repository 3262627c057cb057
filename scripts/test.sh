#!/usr/bin/env bash
# Every check a submission must pass: formatting, clippy with warnings as errors, all Rust tests (unit,
# integration against real media, a live RTSP server and mosquitto, lifecycle/memory), then the browser
# test: the real stack played in headless Chromium, then a short run of each fuzz target. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# MQTT.js from npm with its lock file: build.rs embeds it with the page in the binary.
(cd client && npm ci --silent --no-audit --no-fund)
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test
(cd tests/e2e && npm ci --silent --no-audit --no-fund)
cargo build --quiet
(cd tests/e2e && node --test)
# A short coverage-guided run of every fuzz target from its seed corpus (longer: bash scripts/fuzz.sh 600).
bash scripts/fuzz.sh 15
