//! Any text, any set of added tokens (every flag), any policy and protected ranges, on the
//! real tokenizers: encode and decode never panic, and byte-level tokenizers give the text
//! back.
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokensmith::{AddedToken, SpecialPolicy};

#[derive(Arbitrary, Debug)]
struct Input {
    tokenizer: u8,
    /// Content, and flags: special, single_word, lstrip, rstrip, normalized.
    added: Vec<(String, u8)>,
    policy: u8,
    only: Vec<u32>,
    protected: Vec<(u16, u16)>,
    text: String,
}

fuzz_target!(|input: Input| {
    let mut tokenizer = common::tokenizer(input.tokenizer as usize).clone();
    let added: Vec<AddedToken> = input
        .added
        .iter()
        .take(16)
        .map(|(content, flags)| AddedToken {
            content: content.clone(),
            special: flags & 1 != 0,
            single_word: flags & 2 != 0,
            lstrip: flags & 4 != 0,
            rstrip: flags & 8 != 0,
            normalized: flags & 16 != 0,
        })
        .collect();
    let plain = added.is_empty();
    if !plain && tokenizer.add_tokens(added).is_err() {
        return;
    }
    let protected: Vec<(usize, usize)> = input.protected.iter().map(|&(a, b)| (a as usize, b as usize)).collect();
    let policy = common::policy(input.policy, &input.only);
    common::exercise(&tokenizer, &input.text, &policy, &protected);
    if plain && common::round_trips(input.tokenizer as usize) {
        let ids = tokenizer.encode(&input.text, &SpecialPolicy::Text, false).expect("text policy encodes");
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), input.text, "byte-level round trip");
    }
});
