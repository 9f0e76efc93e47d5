# erofs-wasm recipes. `just demo` and `just test` are the README's quick start.

wasm := "target/wasm32-wasip2/release/erofs_component.wasm"
host := "target/release/erofs-host"

# List the recipes
default:
    @just --list

# Install what the tests and the demo use (wasm target, apt packages as root, npm, pip); idempotent
setup:
    tests/setup.sh

# Build the component (wasm32-wasip2) and the host, both release
build:
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    cargo build --release --target wasm32-wasip2 -p erofs-component
    cargo build --release -p erofs-host

# The component decoding with miniz_oxide instead of zlib-rs, for comparison in `just bench`
build-miniz:
    cargo build --release --target wasm32-wasip2 -p erofs-component --features miniz --target-dir target/miniz

# The component without the per-file header check on first read: the reference of its cost in `just bench`
build-no-header-check:
    cargo build --release --target wasm32-wasip2 -p erofs-component --features no-header-check --target-dir target/no-header-check

# Run every test: unit, property, end-to-end (mounts need root; they say so when they skip), every fuzz target for 10 s, then test-runtimes
test: setup build && _runtime-tests
    cargo test --release --workspace
    just fuzz-all 10

# The same component in Node.js (jco) and Python (wasmtime-py); each skips loudly without its runtime
test-runtimes: build _runtime-tests

_runtime-tests:
    tests/node/run.sh
    tests/python/run.sh

# The manual pages, from the clap definitions: target/man/erofs-host.1 and one per command
man:
    cargo build --release -p erofs-host
    {{host}} man-pages target/man
    @echo "man -l target/man/erofs-host.1"

# clippy and rustfmt, as CI wants them
lint:
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --release --target wasm32-wasip2 -p erofs-component -- -D warnings
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
    CARGO_TARGET_DIR=fuzz/target cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

# Show the main job on a built-in sample layer
demo: setup build
    tests/demo.sh

# Read-path benchmarks with references measured in the same run
bench: build build-miniz build-no-header-check
    python3 tests/bench/bench.py
    python3 tests/bench/index_bench.py
    python3 tests/bench/nbd_bench.py
    python3 tests/bench/network_bench.py
    tests/bench/runtimes_bench.sh

# Whole-image cold start (issue 12): lazy mount vs full pull through a 20 ms / 100 Mbit/s link (and 1 Gbit/s); needs root; not part of `just test`
bench-coldstart: build
    python3 tests/bench/coldstart_bench.py

# Fuzz targets (fuzz/README.md), in the order fuzz-all runs them
fuzz_targets := "zinfo gzran tarindex erofs oci_manifest www_authenticate content_range url_reference nbd build_tar"

# Build the fuzz targets (libFuzzer, coverage-instrumented, stable Rust; fuzz/target)
fuzz-build:
    fuzz/build.sh

# Run one fuzz target for SECONDS: `fuzz TARGET: N execs, C crashes`
fuzz TARGET SECONDS: fuzz-build
    fuzz/run.sh {{TARGET}} {{SECONDS}}

# Run every fuzz target for SECONDS each, one line per target; fails if any crashed
fuzz-all SECONDS: fuzz-build
    #!/bin/sh
    failed=0
    for t in {{fuzz_targets}}; do fuzz/run.sh "$t" {{SECONDS}} || failed=1; done
    exit $failed
