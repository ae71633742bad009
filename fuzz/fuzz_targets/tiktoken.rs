//! A tiktoken encoding from any input: the first line is the split pattern, the rest a
//! rank file. An error, a bounded regex failure, or a tokenizer that encodes and decodes.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tokensmith::formats::tiktoken;
use tokensmith::SpecialPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, ranks) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(ranks) = tiktoken::parse_ranks(ranks, "fuzz.tiktoken") else { return };
    let next = ranks.iter().map(|(_, rank)| *rank).max().unwrap_or(0).saturating_add(1);
    let Ok(tokenizer) = tiktoken::build(ranks, pattern, &[("<|endoftext|>".to_string(), next)]) else { return };
    for sample in common::SAMPLES {
        common::exercise(&tokenizer, sample, &SpecialPolicy::Allow, &[]);
    }
});
