#!/usr/bin/env bash
# Builds the fuzz targets and runs each one on its seeds; exits non-zero on any panic,
# abort, out-of-memory (over 4 GB) or hang (one input over 20 s). The crashing input is
# left in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh 20                      # 20 s per target (what CI runs)
#   fuzz/run.sh 600 encode decode       # a longer run of two targets
#   FUZZ_RUNS=1000000 fuzz/run.sh 0 tokenizer_json   # a number of inputs instead of a time
#
# cargo-fuzz drives libFuzzer; it asks for a nightly compiler only for the sanitizers, so
# `-s none` with RUSTC_BOOTSTRAP=1 builds on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tokenizer_json sentencepiece tiktoken encode decode)
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
[ -d corpus ] || python3 make_seeds.py
cargo fuzz build -s none --fuzz-dir .
for target in "${targets[@]}"; do
    options=(-timeout=20 -rss_limit_mb=4096 -print_final_stats=1)
    if [ -n "${FUZZ_RUNS:-}" ]; then options+=(-runs="$FUZZ_RUNS"); else options+=(-max_total_time="$seconds"); fi
    [ -f "$target.dict" ] && options+=(-dict="$target.dict")
    echo "== $target"
    # The seeds are copied: libFuzzer adds what it finds to the first folder it is given.
    mkdir -p "found/$target"
    cargo fuzz run -s none --fuzz-dir . "$target" "found/$target" "corpus/$target" -- "${options[@]}" 2>&1 \
        | grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb|panicked|ERROR|SUMMARY|Test unit written" \
        || { echo "fuzz: $target failed (see fuzz/artifacts/$target)"; exit 1; }
done
