//! Text normalizers from tokenizer.json (`NFC`, `NFD`, `NFKC`, `NFKD`, `Lowercase`, `Sequence`).

use std::borrow::Cow;
// The same normalization crate (and so the same Unicode 9 tables) as the reference
// `tokenizers`: a newer table composes pairs the reference leaves apart.
use unicode_normalization_alignments::{is_nfc_quick, IsNormalized, UnicodeNormalization};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalizer {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    Sequence(Vec<Normalizer>),
}

impl Normalizer {
    pub fn normalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self {
            // NFC is the common case (Qwen2): skip the allocation when the text is already NFC.
            Normalizer::Nfc => match is_nfc_quick(text.chars()) {
                IsNormalized::Yes => Cow::Borrowed(text),
                _ => Cow::Owned(text.nfc().map(|(c, _)| c).collect()),
            },
            Normalizer::Nfd => Cow::Owned(text.nfd().map(|(c, _)| c).collect()),
            Normalizer::Nfkc => Cow::Owned(text.nfkc().map(|(c, _)| c).collect()),
            Normalizer::Nfkd => Cow::Owned(text.nfkd().map(|(c, _)| c).collect()),
            Normalizer::Lowercase => {
                let changes = |c: char| {
                    let mut lower = c.to_lowercase();
                    !(lower.len() == 1 && lower.next() == Some(c))
                };
                if text.chars().any(changes) {
                    Cow::Owned(text.chars().flat_map(char::to_lowercase).collect())
                } else {
                    Cow::Borrowed(text)
                }
            }
            Normalizer::Sequence(steps) => {
                let mut out = Cow::Borrowed(text);
                for step in steps {
                    if let Cow::Owned(s) = step.normalize(&out) {
                        out = Cow::Owned(s);
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_composes_and_borrows_when_clean() {
        assert_eq!(Normalizer::Nfc.normalize("e\u{301}"), "\u{e9}");
        // Dives Akuru (Unicode 13) does not compose under the reference's tables.
        assert_eq!(Normalizer::Nfc.normalize("\u{11935}\u{11930}"), "\u{11935}\u{11930}");
        assert!(matches!(Normalizer::Nfc.normalize("plain"), Cow::Borrowed(_)));
        let seq = Normalizer::Sequence(vec![Normalizer::Nfkc, Normalizer::Lowercase]);
        assert_eq!(seq.normalize("Ｈello"), "hello");
    }
}
