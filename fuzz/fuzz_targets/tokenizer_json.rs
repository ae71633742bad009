//! Any bytes as a tokenizer.json: an error, or a tokenizer that encodes and decodes the
//! samples and saves a file that loads again.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tokensmith::formats::tokenizer_json;
use tokensmith::SpecialPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(tokenizer) = tokenizer_json::from_str(text, "fuzz") else { return };
    for sample in common::SAMPLES {
        common::exercise(&tokenizer, sample, &SpecialPolicy::Allow, &[]);
        common::exercise(&tokenizer, sample, &SpecialPolicy::Text, &[(0, 3)]);
    }
    if let Ok(saved) = tokenizer_json::to_string(&tokenizer) {
        let again = tokenizer_json::from_str(&saved, "saved");
        assert!(again.is_ok(), "a saved tokenizer loads again: {:?}", again.err());
    }
});
