//! One core's speed encoding a text as documents (cut at blank lines, one `encode` call
//! each, as `datasets.map` calls an encoder), without Python: the floor of a per-document
//! call from Python, and what `perf record` runs on for that mode.
//!
//!     cargo run --release --example profile_docs -- TOKENIZER_JSON TEXT_FILE [ROUNDS]
//!
//! The race's first pass, counted: `MAX_BYTES=500000 WARM_FIFTH=1 FRESH=1 valgrind
//! --tool=callgrind --toggle-collect=profile_docs::pass target/release/examples/profile_docs
//! TOKENIZER_JSON TEXT_FILE 1` (a build with line tables, as `benches/instructions.sh` makes).
use std::time::Instant;
use tokensmith::SpecialPolicy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = std::fs::read_to_string(&args[1]).unwrap();
    let mut text = std::fs::read_to_string(&args[2]).unwrap();
    text.truncate(text.floor_char_boundary(std::env::var("MAX_BYTES").map_or(2_000_000, |v| v.parse().unwrap())));
    let rounds: usize = args.get(3).map_or(10, |r| r.parse().unwrap());
    // FRESH=1: a new tokenizer (so an empty piece cache) for every round, all loaded first:
    // the first pass over new text, as the race's first-pass mode times it.
    let fresh = std::env::var_os("FRESH").is_some();
    let load = || tokensmith::formats::tokenizer_json::from_str(&json, "tokenizer.json").unwrap();
    let toks: Vec<_> = (0..if fresh { rounds } else { 1 }).map(|_| load()).collect();
    if std::env::var_os("WARM_LONG").is_some() {
        // Builds the long-piece tables ahead (a piece of 256 bytes).
        for tok in &toks {
            tok.encode(&"a".repeat(300), &SpecialPolicy::Allow, false).unwrap();
        }
    }
    eprintln!("loaded");
    if let Some(marker) = std::env::var_os("MARK") {
        std::fs::write(marker, b"").unwrap();
    }
    let mut docs: Vec<&str> = text.split("\n\n").filter(|d| !d.trim().is_empty()).collect();
    // WARM_FIFTH=1: each tokenizer first encodes the first fifth of the documents, and only
    // the rest is timed (and counted, with callgrind's `--toggle-collect=profile_docs::pass`),
    // as the race's first-pass mode does: tables built on first need stay out of the count.
    // Each tokenizer is warmed just before its pass: warmed all first, the later ones' pieces
    // pushed the first ones' out of the thread's piece cache.
    let warm: Vec<&str> = match std::env::var_os("WARM_FIFTH") {
        Some(_) => docs.drain(..docs.len() / 5).collect(),
        None => Vec::new(),
    };
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let mut perf = PerfControl::from_env();
    let mut best = f64::MAX;
    for round in 0..rounds {
        let tok = &toks[if fresh { round } else { 0 }];
        if fresh || round == 0 {
            for doc in &warm {
                tok.encode(doc, &SpecialPolicy::Allow, false).unwrap();
            }
        }
        perf.send("enable");
        let start = Instant::now();
        pass(tok, &docs);
        best = best.min(start.elapsed().as_secs_f64());
        perf.send("disable");
    }
    let per_doc = best / docs.len() as f64 * 1e6;
    println!("per-doc: {:.0} MB/s, {per_doc:.2} us a document ({} documents)", bytes as f64 / best / 1e6, docs.len());
    std::process::exit(0); // not dropping the tokenizers, which a profile would count
}

/// `PERF_CTL=ctl PERF_ACK=ack` (two fifos): `perf record` samples the timed passes only,
/// not the loads and the warming between them:
///
///     mkfifo ctl ack; PERF_CTL=ctl PERF_ACK=ack WARM_FIFTH=1 FRESH=1 perf record -D -1
///         --control fifo:ctl,ack -- target/release/examples/profile_docs TOKENIZER_JSON TEXT_FILE 20
struct PerfControl(Option<(std::fs::File, std::fs::File)>);

impl PerfControl {
    fn from_env() -> Self {
        let open = |var: &str, write: bool| {
            let path = std::env::var_os(var)?;
            std::fs::OpenOptions::new().read(!write).write(write).open(path).ok()
        };
        PerfControl(open("PERF_CTL", true).zip(open("PERF_ACK", false)))
    }

    fn send(&mut self, command: &str) {
        use std::io::{Read, Write};
        if let Some((ctl, ack)) = &mut self.0 {
            ctl.write_all(format!("{command}\n").as_bytes()).unwrap();
            let mut answer = [0u8; 5]; // "ack\n" and its NUL
            let _ = ack.read(&mut answer).unwrap();
        }
    }
}

#[inline(never)]
fn pass(tok: &tokensmith::Tokenizer, docs: &[&str]) {
    for doc in docs {
        std::hint::black_box(tok.encode(doc, &SpecialPolicy::Allow, false).unwrap());
    }
}
