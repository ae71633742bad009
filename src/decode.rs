//! Decoders: token strings back to text, each step as the reference's `decode_chain`
//! (`ByteLevel`, `Replace`, `ByteFallback`, `Fuse`, `Strip`, `Metaspace`, `BPEDecoder`,
//! `Sequence`). Without a decoder the reference joins the tokens with spaces.

use crate::bytelevel;
use crate::normalize::Replacement;
use crate::pretokenize::PrependScheme;

#[derive(Debug, Clone)]
pub enum Decoder {
    ByteLevel,
    Replace { pattern: Replacement, content: String },
    ByteFallback,
    Fuse,
    Strip { content: char, start: usize, stop: usize },
    Metaspace { replacement: char, prepend: PrependScheme },
    Bpe { suffix: String },
    Sequence(Vec<Decoder>),
}

impl Decoder {
    /// The text of `tokens` (`None`: no decoder).
    pub fn decode(decoder: Option<&Decoder>, tokens: &[&str]) -> String {
        match decoder {
            None => tokens.join(" "),
            // The common case without a String per token.
            Some(Decoder::ByteLevel) => byte_level(tokens),
            Some(d) => d.chain(tokens.iter().map(|t| t.to_string()).collect()).concat(),
        }
    }

    fn chain(&self, tokens: Vec<String>) -> Vec<String> {
        match self {
            Decoder::ByteLevel => vec![byte_level(&tokens.iter().map(String::as_str).collect::<Vec<_>>())],
            Decoder::Replace { pattern, content } => {
                tokens.into_iter().map(|t| pattern.apply(&t, content).into_owned()).collect()
            }
            Decoder::ByteFallback => {
                let mut out = Vec::with_capacity(tokens.len());
                let mut pending: Vec<u8> = Vec::new();
                let flush = |pending: &mut Vec<u8>, out: &mut Vec<String>| {
                    if pending.is_empty() {
                        return;
                    }
                    match String::from_utf8(std::mem::take(pending)) {
                        Ok(s) => out.push(s),
                        // One replacement char per byte, as the reference.
                        Err(e) => out.extend(std::iter::repeat("\u{fffd}".to_string()).take(e.as_bytes().len())),
                    }
                };
                for token in tokens {
                    match byte_token(&token) {
                        Some(b) => pending.push(b),
                        None => {
                            flush(&mut pending, &mut out);
                            out.push(token);
                        }
                    }
                }
                flush(&mut pending, &mut out);
                out
            }
            Decoder::Fuse => vec![tokens.concat()],
            Decoder::Strip { content, start, stop } => tokens
                .into_iter()
                .map(|token| {
                    let chars: Vec<char> = token.chars().collect();
                    let from = chars.iter().take(*start).take_while(|&&c| c == *content).count();
                    let cut = chars[from..].iter().rev().take(*stop).take_while(|&&c| c == *content).count();
                    chars[from..chars.len() - cut].iter().collect()
                })
                .collect(),
            Decoder::Metaspace { replacement, prepend } => tokens
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    token
                        .chars()
                        .filter_map(|c| {
                            if c != *replacement {
                                Some(c)
                            } else if i == 0 && *prepend != PrependScheme::Never {
                                None
                            } else {
                                Some(' ')
                            }
                        })
                        .collect()
                })
                .collect(),
            Decoder::Bpe { suffix } => {
                let last = tokens.len().saturating_sub(1);
                tokens
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| t.replace(suffix.as_str(), if i == last { "" } else { " " }))
                    .collect()
            }
            Decoder::Sequence(steps) => steps.iter().fold(tokens, |tokens, step| step.chain(tokens)),
        }
    }
}

/// Byte-level tokens back to text; invalid UTF-8 becomes U+FFFD.
fn byte_level(tokens: &[&str]) -> String {
    let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
    for token in tokens {
        match bytelevel::decode_str(token) {
            Some(b) => bytes.extend_from_slice(&b),
            // A token outside the byte alphabet (an added word) is its own UTF-8.
            None => bytes.extend_from_slice(token.as_bytes()),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The byte of a `<0xXX>` token.
pub fn byte_token(token: &str) -> Option<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        u8::from_str_radix(&token[3..5], 16).ok()
    } else {
        None
    }
}
