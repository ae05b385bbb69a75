//! The examples, run as binaries on stdin: wordcount over generated text
//! of more than 100,000 words against a straightforward count of the same
//! text, and the windowed sums against a straightforward sum.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use support::example;

/// Deterministic text: mixed case, digits, punctuation, runs of
/// separators, and letters outside ASCII.
fn text(lines: usize) -> Vec<String> {
    const VOCABULARY: [&str; 12] = [
        "Fila", "runs", "EVERY", "stage", "on", "any", "worker", "déjà", "vu", "x86", "42",
        "Straße",
    ];
    const SEPARATORS: [&str; 6] = [" ", ", ", " -- ", "\t", "!?", "\"'"];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..lines)
        .map(|_| {
            let words = 1 + next(20);
            let mut line = String::new();
            for _ in 0..words {
                line.push_str(VOCABULARY[next(VOCABULARY.len())]);
                if next(7) == 0 {
                    // Two words glued by a digit-free separator.
                    line.push('_');
                    line.push_str(VOCABULARY[next(VOCABULARY.len())]);
                }
                line.push_str(SEPARATORS[next(SEPARATORS.len())]);
            }
            line
        })
        .collect()
}

/// The straightforward count: lowercase, split on what is not a letter or
/// digit.
fn count(lines: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in lines {
        for word in line
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(word.to_owned()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn wordcount_on_stdin_gives_the_same_counts_as_a_plain_count() {
    let lines = text(12_000);
    let expected = count(&lines);
    let total: u64 = expected.values().sum();
    assert!(total >= 100_000, "only {total} words");

    let mut child = Command::new(example("wordcount"))
        .args(["--source", "stdin", "--workers", "4", "--no-pin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = lines.clone();
    let writer = std::thread::spawn(move || {
        for line in &input {
            let json = serde_json::json!({ "text": line });
            writeln!(stdin, "{json}").unwrap();
        }
        // A bad line is reported and skipped; nothing else is lost.
        writeln!(stdin, "{{\"txt\": \"typo\"}}").unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("missing field `text`"), "{stderr}");

    // Every occurrence emits the word's count after it: each word's
    // counts are exactly 1..=n, and n is the final count.
    let mut emitted: HashMap<String, Vec<u64>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let word = v["word"].as_str().unwrap().to_owned();
        emitted
            .entry(word)
            .or_default()
            .push(v["count"].as_u64().unwrap());
    }
    let finals: HashMap<String, u64> = emitted
        .iter()
        .map(|(w, counts)| (w.clone(), *counts.iter().max().unwrap()))
        .collect();
    assert_eq!(finals, expected);
    for (word, mut counts) in emitted {
        counts.sort_unstable();
        assert!(
            counts.iter().copied().eq(1..=expected[&word]),
            "{word}: each count once"
        );
    }
}

#[test]
fn window_sums_on_stdin_match_a_plain_sum_per_key_and_second() {
    // 30 s of readings, 7 ms apart, over 5 keys; then one 3 s late.
    let readings: Vec<(String, i64, i64)> = (0..30_000 / 7)
        .map(|i| (format!("k{}", i % 5), i % 13, i * 7))
        .collect();
    let mut expected: HashMap<(String, i64), i64> = HashMap::new();
    for (key, value, time) in &readings {
        *expected
            .entry((key.clone(), time / 1000 * 1000))
            .or_default() += value;
    }
    let mut input: String = readings
        .iter()
        .map(|(key, value, time)| {
            format!("{{\"key\":\"{key}\",\"value\":{value},\"time\":{time}}}\n")
        })
        .collect();
    input.push_str("{\"key\":\"k0\",\"value\":1,\"time\":26000}\n");
    // One worker, one record in flight: records reach the window in input
    // order, so only the last is late.
    let mut child = Command::new(example("window_sums"))
        .args([
            "--source",
            "stdin",
            "--workers",
            "1",
            "--window",
            "1",
            "--no-pin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("late: event time 26000 ms is in window [26000, 27000) ms"),
        "{stderr}"
    );
    let mut got: HashMap<(String, i64), i64> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (start, end) = (v["start"].as_i64().unwrap(), v["end"].as_i64().unwrap());
        assert_eq!(end - start, 1000);
        let key = (v["key"].as_str().unwrap().to_owned(), start);
        // One result per key and window.
        assert!(
            got.insert(key, v["sum"].as_i64().unwrap()).is_none(),
            "{line}"
        );
    }
    assert_eq!(got, expected);
}
