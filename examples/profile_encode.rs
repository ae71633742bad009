//! Where one core's time goes when encoding a text: the lexer alone, then the whole encode.
//!
//!     cargo run --release --example profile_encode -- TOKENIZER_JSON TEXT_FILE [ROUNDS]
//!
//! `MAX_BYTES` caps the text (default 2000000), as in `profile_docs`. `ADD_WORDS`: a file of
//! words, one a line, added as (non-special) tokens first, as `benches/added_tokens.py` does.
use std::time::Instant;
use tokensmith::pretokenize::lexer::Lexer;
use tokensmith::pretokenize::Dialect;
use tokensmith::SpecialPolicy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = std::fs::read_to_string(&args[1]).unwrap();
    let mut text = std::fs::read_to_string(&args[2]).unwrap();
    text.truncate(text.floor_char_boundary(std::env::var("MAX_BYTES").map_or(2_000_000, |v| v.parse().unwrap())));
    let rounds: usize = args.get(3).map_or(10, |r| r.parse().unwrap());
    let mut tok = tokensmith::formats::tokenizer_json::from_str(&json, "tokenizer.json").unwrap();
    if let Some(words) = std::env::var_os("ADD_WORDS") {
        let words = std::fs::read_to_string(words).unwrap();
        let added = words.lines().map(|w| tokensmith::AddedToken::new(w, false)).collect();
        tok.add_tokens(added).unwrap();
    }
    let mb = text.len() as f64 / 1e6;
    let best = |f: &mut dyn FnMut() -> usize| {
        let mut best = f64::MAX;
        let mut n = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            n = f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        (mb / best, n)
    };
    let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let lexer = Lexer::for_pattern(llama3, Dialect::Oniguruma).unwrap();
    let (speed, pieces) = best(&mut || {
        let mut n = 0;
        lexer.for_each_match(&text, |_, _| n += 1);
        n
    });
    println!("lexer (llama3 pattern): {speed:.0} MB/s, {pieces} matches");
    if std::env::var_os("LEXER_ONLY").is_some() {
        return;
    }
    let policy = SpecialPolicy::Text;
    let (speed, ids) = best(&mut || tok.encode(&text, &policy, false).unwrap().len());
    println!("encode: {speed:.0} MB/s, {ids} ids");
}
