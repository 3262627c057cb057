#!/usr/bin/env bash
# Every check a submission must pass: formatting, clippy with warnings as errors, all Rust tests (cargo
# nextest: unit, property, fuzz-seed replay and integration), the docker image's final stage in a Debian
# chroot, the browser tests (the page in Chromium, Firefox ESR and WebKitGTK, on secure and LAN-like origins,
# behind nginx and Caddy, over throttled and lossy links), and a short run of each fuzz target. CI runs
# exactly this. Each stage's and each lane's time is printed at the end.
#
# On two cores, in this order: the builds; the tests that measure this machine's CPU, alone; the other Rust
# tests (four at a time), with the image check and the fuzzing beneath them at the lowest priority (nice 19,
# taking only idle CPU); then the browser tests, one file at a time. Browser files side by side, or beside the
# Rust tests, failed timing checks in every such run here (docs/testing.md): the pages decode and draw video
# in software on the same two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

# Integration tests whose figures are this machine's CPU (admission, shedding, the ffmpeg reference).
ALONE='test(/^(overload|bench)::/)'
logs="$(mktemp -d)"
times=()
# CPU_NOW: CPU seconds of this shell's finished children, from bash's `times` (second line). It is called
# directly, never in a pipe or $(...): those run in a subshell of their own, which has no children yet.
cpu_now() {
  times >"$logs/times"
  CPU_NOW="$(tail -1 "$logs/times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')"
}
stage() {
  local name="$1" start=$SECONDS rc=0 cpu_before
  shift
  echo "== $name"
  cpu_now
  cpu_before=$CPU_NOW
  "$@" || rc=$?
  cpu_now
  times+=("$(printf '%-34s %4d s, CPU %4d s%s' "$name" $((SECONDS - start)) $((CPU_NOW - cpu_before)) "$( ((rc)) && echo "  FAILED ($rc)")")")
  return "$rc"
}
report() {
  echo "== stage times"
  printf '  %s\n' "${times[@]}"
  for f in "$logs"/*.time; do [ -e "$f" ] && printf '  %s\n' "$(cat "$f")"; done
  printf '  %-34s %4d s\n' total "$SECONDS"
}
trap report EXIT

# A lane: a command whose output goes to its own log (printed whole when it is waited for), its time, its
# CPU (that of everything it started, from bash's `times`) and status in the report. start_lane runs one in
# the background.
lane() {
  local name="$1" start=$SECONDS rc=0
  shift
  "$@" >"$logs/$name.log" 2>&1 || rc=$?
  cpu_now
  printf '  lane %-30s %4d s, CPU %4d s%s\n' "$name" $((SECONDS - start)) "$CPU_NOW" "$( ((rc)) && echo "  FAILED ($rc)")" >"$logs/$name.time"
  return "$rc"
}
lanes=()
start_lane() {
  (lane "$@") &
  lanes+=("$1:$!")
}
wait_lanes() {
  local rc=0 entry
  for entry in "${lanes[@]}"; do
    wait "${entry##*:}" || rc=1
    echo "== lane ${entry%%:*}"
    cat "$logs/${entry%%:*}.log"
  done
  lanes=()
  return "$rc"
}

stage setup bash scripts/setup.sh
# MQTT.js from npm with its lock file (build.rs embeds it with the page in the binary), and the browser drivers.
stage "npm ci" bash -c 'cd client && npm ci --silent --no-audit --no-fund && cd ../tests/e2e && npm ci --silent --no-audit --no-fund'
stage "cargo fmt" cargo fmt --all --check
stage "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "build tests" cargo nextest run --workspace --no-run --cargo-quiet
stage "CPU-measuring tests, alone" cargo nextest run --workspace --no-fail-fast -j 1 -E "$ALONE"
# The image check mostly downloads (debootstrap); it starts now and is waited for at the end.
if [ "$(id -u)" -eq 0 ]; then
  start_lane "docker image (chroot)" nice -n 19 bash scripts/check-image.sh target/debug/mqtt-video
else
  start_lane "docker image (chroot)" echo "check-image: skipped, debootstrap and chroot need root (CI runs as root)"
fi
image_lanes=("${lanes[@]}")
lanes=()

# The Rust tests, with what is niced beside them.
rust_tests() {
  local rc=0
  start_lane fuzz nice -n 19 bash scripts/fuzz.sh 15
  (lane "Rust tests" cargo nextest run --workspace --no-fail-fast -j "${TEST_THREADS:-4}" -E "not ($ALONE)") || rc=1
  echo "== lane Rust tests"
  cat "$logs/Rust tests.log"
  wait_lanes || rc=1
  return "$rc"
}
# WebKitGTK under Xvfb, software-drawn on two shared cores, now and then hangs a page or stalls a <video>
# (tests/e2e/README.md): its run gets a second try, and the first failure stays in the log above it.
webkit() {
  (cd tests/e2e && ENGINES=webkit node --test engines.test.js hevc.test.js) && return 0
  echo "== WebKit: the run above failed; once more"
  (cd tests/e2e && ENGINES=webkit node --test engines.test.js hevc.test.js)
}
stage "other Rust tests, fuzzing" rust_tests
lanes=("${image_lanes[@]}")
stage "docker image (chroot), waited for" wait_lanes
stage "browser tests" bash -c 'cd tests/e2e && ENGINES=chromium,firefox node --test'
stage "browser tests, WebKit" webkit
