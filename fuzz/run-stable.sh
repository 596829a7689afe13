#!/usr/bin/env bash
# Runs the frame-decoder fuzz target under libFuzzer on a *stable* toolchain, for machines
# without nightly (cargo-fuzz needs nightly for its sanitizer flags). The coverage
# instrumentation libFuzzer needs is plain `-C passes` / `-C llvm-args`, which stable accepts;
# what is missing is only AddressSanitizer, which safe Rust rarely needs.
#
#   bash fuzz/run-stable.sh [SECONDS]      (default 600; corpus in fuzz/corpus/frame_decoder)
#
# With nightly and cargo-fuzz installed, `cargo +nightly fuzz run frame_decoder` does the same
# with ASan on top. A crash leaves its input in fuzz/artifacts/frame_decoder/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
target="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# --target keeps these flags off build scripts, which must not be instrumented.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --target "$target" --bin frame_decoder
mkdir -p corpus/frame_decoder artifacts/frame_decoder
exec "$CARGO_TARGET_DIR/$target/release/frame_decoder" \
  -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 \
  -artifact_prefix=artifacts/frame_decoder/ corpus/frame_decoder
