//! tokensmith: exact BPE (byte-level and SentencePiece-style) with safe special-token handling.
//!
//! Pure Rust; the Python bindings live in `py` behind the `python` feature.

pub mod bpe;
pub mod bytelevel;
pub mod decode;
pub mod embed;
pub mod error;
pub mod formats;
pub mod normalize;
pub mod pages;
pub mod pool;
pub mod postprocess;
pub mod pretokenize;
pub mod special;
pub mod tokenizer;
pub mod train;

#[cfg(feature = "python")]
mod py;

#[cfg(test)]
mod testing {
    /// A xorshift64 stream from `seed` (not 0): reproducible random tests.
    pub fn random(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }
}

pub use error::{Error, Result};
pub use special::{AddedToken, SpecialPolicy};
pub use tokenizer::Tokenizer;
