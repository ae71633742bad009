//! Any bytes as a SentencePiece .model file: an error, or a tokenizer that encodes and
//! decodes the samples.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tokensmith::formats::sentencepiece;
use tokensmith::SpecialPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(tokenizer) = sentencepiece::from_bytes(data, "fuzz.model") else { return };
    for sample in common::SAMPLES {
        common::exercise(&tokenizer, sample, &SpecialPolicy::Allow, &[]);
    }
});
