#!/usr/bin/env bash
# Runs the frame-decoder fuzz target under libFuzzer on a *stable* toolchain, for machines
# without nightly (cargo-fuzz needs nightly for its sanitizer flags). The coverage
# instrumentation libFuzzer needs is plain `-C passes` / `-C llvm-args`, which stable accepts;
# what is missing is only AddressSanitizer, which safe Rust rarely needs.
#
#   bash fuzz/run-stable.sh [SECONDS]      (default 600; corpus in fuzz/corpus/frame_decoder)
#   bash fuzz/run-stable.sh --build-only   (CI: the target must keep building; runs nothing)
#
# With nightly and cargo-fuzz installed, `cargo +nightly fuzz run frame_decoder` does the same
# with ASan on top. A crash leaves its input in fuzz/artifacts/frame_decoder/.
set -euo pipefail
cd "$(dirname "$0")"
build_only=false
if [ "${1:-}" = "--build-only" ]; then
  build_only=true
  shift
fi
seconds="${1:-600}"
target="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# --target keeps these flags off build scripts, which must not be instrumented.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --locked --target "$target" --bin frame_decoder
if "$build_only"; then
  exit 0
fi
mkdir -p corpus/frame_decoder artifacts/frame_decoder
exec "$CARGO_TARGET_DIR/$target/release/frame_decoder" \
  -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 \
  -artifact_prefix=artifacts/frame_decoder/ corpus/frame_decoder
