#!/usr/bin/env bash
# Runs each coverage-guided fuzz target (fuzz/fuzz_targets: libFuzzer, through libfuzzer-sys) for a bounded
# time, starting from the committed seed corpora (fuzz/seeds, real captures: bash fuzz/seeds.sh), one target
# per core at a time (FUZZ_JOBS to change). A crash fails the run, with the input that caused it under
# fuzz/artifacts/. The targets build against the wire crate alone (crates/wire: no FFmpeg). Every seed is also
# replayed by the ordinary tests (crates/wire/tests/fuzz_seeds.rs).
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default 60 s, every target)
# The build is what `cargo fuzz build --sanitizer none` does (SanitizerCoverage's flags, --cfg fuzzing, debug
# assertions and overflow checks in release), by cargo alone: installing cargo-fuzz took 3 minutes of every
# fresh CI machine. `cargo fuzz run` works on the same targets for a developer who has it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(ls fuzz_targets | sed -n 's/\.rs$//p')
fi
host="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps the flags off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --quiet --target "$host" --bins
bin_dir="target/$host/release"
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
# One target per core at a time: each libFuzzer run is one process on one core.
jobs="${FUZZ_JOBS:-$(nproc)}"
run() {
  local t="$1"
  mkdir -p "$corpus/$t" "artifacts/$t"
  "$bin_dir/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -print_final_stats=1 \
    "$corpus/$t" "seeds/$t" >"$corpus/$t.log" 2>&1 || true
  echo "fuzz: $t for ${secs} s"
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)|ERROR|panicked|deadly" "$corpus/$t.log" || true
}
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
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
