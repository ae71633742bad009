//! What every target shares: the real tokenizers of `../shared/data`, and one routine that
//! drives a tokenizer through the whole public API and checks what must always hold.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use tokensmith::special::Protected;
use tokensmith::tokenizer::byte_ranges;
use tokensmith::{SpecialPolicy, Tokenizer};

/// `TOKENSMITH_DATA`, else the project's shared data beside the checkout.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("TOKENSMITH_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    }
}

fn load(name: &str) -> Tokenizer {
    let dir = data_dir();
    let result = if name.ends_with(".model") {
        let path = dir.join("sentencepiece").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (set TOKENSMITH_DATA)", path.display()));
        tokensmith::formats::sentencepiece::from_bytes(&bytes, name)
    } else {
        let path = dir.join("tokenizers").join(name).join("tokenizer.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set TOKENSMITH_DATA)", path.display()));
        tokensmith::formats::tokenizer_json::from_str(&text, name)
    };
    result.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Real tokenizers of every family: byte-level BPE (gpt2, llama3; qwen2 adds NFC),
/// SentencePiece-style BPE from tokenizer.json (llama2, gemma4) and from a .model file.
pub const NAMES: [&str; 6] = ["gpt2", "llama3", "qwen2", "llama2", "gemma4", "mistral-v3.model"];

/// Loaded on first use, once per process.
pub fn tokenizer(i: usize) -> &'static Tokenizer {
    static LOADED: [OnceLock<Tokenizer>; NAMES.len()] = [const { OnceLock::new() }; NAMES.len()];
    let i = i % NAMES.len();
    LOADED[i].get_or_init(|| load(NAMES[i]))
}

/// Byte-level tokenizers with no normalizer: decode(encode(text)) is the text.
pub fn round_trips(i: usize) -> bool {
    matches!(NAMES[i % NAMES.len()], "gpt2" | "llama3")
}

/// Texts a mutated tokenizer must encode and decode: specials, spaces, CJK, emoji, marks.
pub const SAMPLES: [&str; 6] = [
    "Hello world! <|endoftext|> <s>  </s>\n\n",
    "  def f(x):\n\treturn x**2  # 你好，世界 🦀🦀",
    "e\u{301}\u{1F469}\u{200D}\u{1F4BB} Ǆ ﬁ ½ \u{0}\u{7f}\u{fffd}",
    "",
    " ",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!",
];

/// The policies a caller can ask for; `only` picks the special ids of `Only`.
pub fn policy(which: u8, only: &[u32]) -> SpecialPolicy {
    match which % 4 {
        0 => SpecialPolicy::Allow,
        1 => SpecialPolicy::Text,
        2 => SpecialPolicy::Raise,
        _ => SpecialPolicy::Only(only.iter().copied().collect()),
    }
}

/// Encodes `text` every way the API allows and decodes the result. Errors are fine (a
/// special token under `Raise`, a mutated file's pipeline); a panic, an id outside the
/// tokenizer or an offset outside the text is a bug.
pub fn exercise(tokenizer: &Tokenizer, text: &str, policy: &SpecialPolicy, protected: &[(usize, usize)]) {
    let ranges = byte_ranges(text, protected);
    let chars = text.chars().count();
    for add_special_tokens in [false, true] {
        let Ok(ids) = tokenizer.encode(text, policy, add_special_tokens) else { continue };
        let with_offsets = tokenizer.encode_with_offsets(
            text,
            policy,
            Protected { ranges: &ranges, allowed: None },
            add_special_tokens,
        );
        if let Ok((ids_too, offsets)) = with_offsets {
            assert_eq!(ids_too.len(), offsets.len(), "one offset per id");
            if ranges.is_empty() {
                assert_eq!(ids, ids_too, "encode and encode_with_offsets agree");
            }
            for &(start, end) in &offsets {
                assert!(start <= end && end <= chars, "offset ({start}, {end}) outside {chars} chars");
            }
        }
        for skip in [false, true] {
            check_decode(tokenizer, &ids, skip);
        }
    }
}

/// Ids all in the tokenizer decode; any other id is an error. (A post-processor may name
/// an id outside the vocabulary: the reference then drops it from the text in silence.)
pub fn check_decode(tokenizer: &Tokenizer, ids: &[u32], skip_special_tokens: bool) {
    let known = ids.iter().all(|&id| tokenizer.id_to_token(id).is_some());
    match tokenizer.decode(ids, skip_special_tokens) {
        Ok(_) => assert!(known, "decode accepted an id outside the vocabulary"),
        Err(e) => assert!(!known, "decode refused ids of the vocabulary: {e}"),
    }
}
