//! Any ids on the real tokenizers: a string for ids of the vocabulary, an error naming the
//! first id outside it; never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    tokenizer: u8,
    skip_special_tokens: bool,
    /// Most ids are folded into the vocabulary, so that decoding gets past the id check.
    fold: bool,
    ids: Vec<u32>,
}

fuzz_target!(|input: Input| {
    let tokenizer = common::tokenizer(input.tokenizer as usize);
    let size = tokenizer.vocab_size() as u32;
    let ids: Vec<u32> = if input.fold { input.ids.iter().map(|id| id % size).collect() } else { input.ids };
    common::check_decode(tokenizer, &ids, input.skip_special_tokens);
});
