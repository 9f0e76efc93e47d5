#!/bin/sh
# run.sh TARGET SECONDS [LIBFUZZER-FLAG...]: run one built fuzz target for SECONDS (or
# until a flag such as -runs=1000000 stops it) on its corpus (seeded by
# seeds.py; the regression inputs in regressions/TARGET are replayed first), then print
#   fuzz TARGET: N execs, C crashes
# and exit non-zero if it found a crash, a hang or an allocation past its bound (the input
# is then in artifacts/TARGET/).
set -eu
cd "$(dirname "$0")"
target=$1
seconds=$2
shift 2
bin=target/x86_64-unknown-linux-gnu/release/$target
[ -x "$bin" ] || { echo "fuzz: $bin is not built (run fuzz/build.sh)" >&2; exit 2; }
python3 seeds.py "$target"
mkdir -p "artifacts/$target" "regressions/$target"
log=artifacts/$target.log
before=$(ls "artifacts/$target" | wc -l)
# -timeout: an input that takes 10 s is a hang. -rss_limit_mb: the whole process,
# libFuzzer's corpus included; the tighter bound on what the parser allocates is the
# target's own (erofs_fuzz::bound_memory, see README.md). -max_len: room for the
# biggest seed, so mutations can grow a real image or a tar with several members.
status=0
"$bin" "corpus/$target" "regressions/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=131072 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" "$@" >"$log" 2>&1 || status=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
if [ -z "$execs" ]; then
    # No final stats (killed by a crash before they print): the last status line's count.
    execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
fi
crashes=$(( $(ls "artifacts/$target" | wc -l) - before ))
if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1  # it failed without saving an input: still a failure
fi
echo "fuzz $target: ${execs:-0} execs, $crashes crashes"
if [ "$crashes" -ne 0 ]; then
    echo "fuzz $target: see $log and artifacts/$target/" >&2
    grep -m 5 -E 'panicked|ERROR|erofs-fuzz:|SUMMARY' "$log" >&2 || true
    exit 1
fi
