//! Reading and writing the file formats tokenizers come in.

pub mod tiktoken;
pub mod tokenizer_json;
