//! One core's speed encoding a text as documents (cut at blank lines, one `encode` call
//! each, as `datasets.map` calls an encoder), without Python: the floor of a per-document
//! call from Python, and what `perf record` runs on for that mode.
//!
//!     cargo run --release --example profile_docs -- TOKENIZER_JSON TEXT_FILE [ROUNDS]
use std::time::Instant;
use tokensmith::SpecialPolicy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = std::fs::read_to_string(&args[1]).unwrap();
    let mut text = std::fs::read_to_string(&args[2]).unwrap();
    text.truncate(text.floor_char_boundary(2_000_000));
    let rounds: usize = args.get(3).map_or(10, |r| r.parse().unwrap());
    let tok = tokensmith::formats::tokenizer_json::from_str(&json, "tokenizer.json").unwrap();
    let docs: Vec<&str> = text.split("\n\n").filter(|d| !d.trim().is_empty()).collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for doc in &docs {
            std::hint::black_box(tok.encode(doc, &SpecialPolicy::Allow, false).unwrap());
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    let per_doc = best / docs.len() as f64 * 1e6;
    println!("per-doc: {:.0} MB/s, {per_doc:.2} us a document ({} documents)", bytes as f64 / best / 1e6, docs.len());
}
