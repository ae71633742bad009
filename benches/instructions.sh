#!/usr/bin/env bash
# Instructions of one encode pass, counted by callgrind: noise-free, where wall time on a
# shared VM swings by 30%. Compare two builds by running this on each.
#
#     benches/instructions.sh [TOKENIZER_JSON] [TEXT_FILE] [profile_encode|profile_docs]
#
# profile_encode encodes the text in one call, profile_docs one call per blank-line
# document (MAX_BYTES, default here 500000, caps the text). Only `Tokenizer::encode` is
# counted. A run of one round and one of two are subtracted: "first" is a pass with an
# empty piece cache, "warm" a pass over text the cache has seen. Needs valgrind
# (`apt-get install valgrind`); builds with line tables into $TARGET (default
# /tmp/tokensmith-instructions) so that `callgrind_annotate` can name source lines.
set -euo pipefail
cd "$(dirname "$0")/.."
tokenizer=${1:-../shared/data/tokenizers/llama3/tokenizer.json}
text=${2:-../shared/data/corpora/en/debian-handbook.en-US.txt}
example=${3:-profile_encode}
target=${TARGET:-/tmp/tokensmith-instructions}
export MAX_BYTES=${MAX_BYTES:-500000}
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C force-frame-pointers=yes" \
    CARGO_TARGET_DIR="$target" cargo build --quiet --release --example "$example"
count() {
    valgrind --tool=callgrind --callgrind-out-file="$target/callgrind.$1.out" \
        --toggle-collect='tokensmith::tokenizer::Tokenizer::encode' \
        "$target/release/examples/$example" "$tokenizer" "$text" "$1" 2>&1 |
        awk '/Collected/ {print $4}'
}
one=$(count 1)
two=$(count 2)
echo "$example $(basename "$(dirname "$tokenizer")") $(basename "$text"): first pass $one, warm pass $((two - one)) instructions"
echo "per line: callgrind_annotate $target/callgrind.2.out"
