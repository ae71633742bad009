//! Reading and writing the file formats tokenizers come in.

pub mod sentencepiece;
pub mod tiktoken;
pub mod tokenizer_json;
mod typed_json;
