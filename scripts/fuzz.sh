#!/usr/bin/env bash
# Runs each coverage-guided fuzz target (fuzz/fuzz_targets, libFuzzer through cargo-fuzz) for a bounded time,
# starting from the committed seed corpora (fuzz/seeds, real captures: bash fuzz/seeds.sh), one target per
# core at a time (FUZZ_JOBS to change). A crash fails the run, with the input that caused it under
# fuzz/artifacts/. The targets build against the wire crate alone (crates/wire: no FFmpeg).
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default 60 s, every target)
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cd fuzz
cargo fuzz build --sanitizer none
# One target per core at a time: each libFuzzer run is one process on one core.
jobs="${FUZZ_JOBS:-$(nproc)}"
run() {
  local t="$1"
  mkdir -p "$corpus/$t"
  cargo fuzz run --sanitizer none "$t" "$corpus/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 \
    >"$corpus/$t.log" 2>&1 || true
  echo "fuzz: $t for ${secs} s"
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)|ERROR|panicked|deadly" "$corpus/$t.log" || true
}
for t in "${targets[@]}"; do
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
  run "$t" &
done
wait
crashed=0
for t in "${targets[@]}"; do
  if ls artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t crashed; inputs in fuzz/artifacts/$t/" >&2
    crashed=1
  fi
done
exit "$crashed"
