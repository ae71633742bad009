//! The GPT-2 byte <-> printable-char bijection used by byte-level BPE vocabularies.
//!
//! Vocabulary files spell every byte as a printable char (`Ġ` for a space); the core
//! works on raw bytes and only uses this table at the file boundary and in `decode`.

use std::sync::OnceLock;

struct Tables {
    byte_to_char: [char; 256],
    char_to_byte: rustc_hash::FxHashMap<char, u8>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut byte_to_char = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            byte_to_char[b as usize] = if printable(b) {
                b as char
            } else {
                let c = char::from_u32(next).expect("valid code point");
                next += 1;
                c
            };
        }
        let char_to_byte = byte_to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        Tables { byte_to_char, char_to_byte }
    })
}

pub fn byte_to_char(b: u8) -> char {
    tables().byte_to_char[b as usize]
}

pub fn char_to_byte(c: char) -> Option<u8> {
    tables().char_to_byte.get(&c).copied()
}

/// Raw bytes of a vocabulary string, or `None` when it uses a char outside the alphabet
/// (such a token can never be produced by byte-level BPE merges).
pub fn decode_str(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

pub fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_str(&encode_bytes(&all)).unwrap(), all);
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(decode_str("新"), None);
    }
}
