//! Word count on fila: JSON lines `{"text": "..."}` in, and for every word
//! of every line, `{"word": w, "count": n}` out, n being the word's count
//! so far. A word is a run of letters and digits of the lowercased text.
//! The output's key is the word. Run with `--latest-per-key`, it writes of
//! a word's counts in one sink batch only the last (docs/design/state.md#latest),
//! and, since a reader then sees each word's latest count and not every
//! step, it counts with `reduce_combined`: a batch's words go through the
//! repartition topic as one record per word, carrying how many times it
//! came (docs/design/state.md#combining).
//!
//! On Kafka the words go through a repartition topic keyed by word, so
//! that members of one group count each word once between them, and the
//! counts are durable (docs/design/state.md#repartition).
//!
//! It takes every flag of `fila run`:
//!
//!     printf '%s\n' '{"text": "To be, or not to be"}' \
//!       | cargo run --release --example wordcount -- --source stdin
//!     cargo run --release --example wordcount -- --source kafka --input-topic lines --output-topic counts

use std::process::ExitCode;

use fila_pipeline::cli::{self, JobSpec};
use fila_pipeline::dataflow::Job;
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: cli::MiMalloc = cli::MiMalloc;

#[derive(Deserialize)]
struct Line {
    text: String,
}

#[derive(Serialize)]
struct Count<'a> {
    word: &'a str,
    count: u64,
}

/// The words of `text`: lowercased, split on anything that is not a
/// letter or a digit.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Counts every word: each count written when `every_count`, or else
/// combined before the repartition.
fn job(every_count: bool) -> Job {
    let words = Job::new("wordcount")
        .decode(|input| input.json::<Line>())
        .flat_map("split", |line: Line| {
            Ok(words(&line.text).into_iter().map(|w| (w, 1u64)))
        })
        .key_by(|(word, _): &(String, u64)| word.clone());
    // A sum: associative, so it may be combined.
    let add = |(word, n): &(String, u64), (_, more): (String, u64)| Ok((word.clone(), n + more));
    let counts = if every_count {
        words.reduce("count", add)
    } else {
        words.reduce_combined("count", add)
    };
    counts.sink_keyed(|(word, count): &(String, u64)| {
        let out = serde_json::to_vec(&Count {
            word,
            count: *count,
        });
        let out = out.expect("a count always serializes");
        (Some(word.as_bytes().to_vec()), out)
    })
}

fn main() -> ExitCode {
    cli::run_main(|flags| {
        JobSpec::new(job(!flags.latest_per_key)).generate(|i| {
            const WORDS: [&str; 5] = ["fila", "runs", "every", "stage", "anywhere"];
            let text = format!("{} {}", WORDS[i as usize % 5], WORDS[(i as usize / 5) % 5]);
            serde_json::json!({ "text": text }).to_string().into_bytes()
        })
    })
}
