#!/bin/sh
# Build every fuzz target (release, one crate, shared deps) with libFuzzer's coverage
# instrumentation, on stable Rust. --target keeps RUSTFLAGS off build scripts and proc
# macros; the separate target dir keeps the instrumented build apart from the normal one.
set -eu
cd "$(dirname "$0")"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
CARGO_TARGET_DIR=target \
    exec cargo build --release --target x86_64-unknown-linux-gnu "$@"
