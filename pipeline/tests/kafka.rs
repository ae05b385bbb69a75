//! `fila run --source kafka` and `fila load` against a real Kafka broker.
//!
//! These need the broker that `scripts/test` starts (through `scripts/kafka
//! up`), named by FILA_TEST_BROKERS. They are `#[ignore]`d in a plain
//! `cargo test`; `scripts/test` runs them with `--ignored`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fila_connectors::{TopicReader, TopicWriter};
use fila_pipeline::reference::{fib, message, FibRecord};
use serde_json::Value;

fn brokers() -> String {
    std::env::var("FILA_TEST_BROKERS")
        .expect("FILA_TEST_BROKERS must name the test broker (scripts/test sets it)")
}

/// Topic and group names unique to one test run.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A `fila run --source kafka` child, killed if the test ends early.
struct Fila {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Fila {
    fn start(args: &[&str]) -> Fila {
        let dir = std::env::temp_dir();
        let tag = unique("fila-run");
        let (stdout, stderr) = (
            dir.join(format!("{tag}.out")),
            dir.join(format!("{tag}.err")),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_fila"))
            .args([
                "run",
                "--source",
                "kafka",
                "--brokers",
                &brokers(),
                "--report",
                "json",
            ])
            .args(args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("fila starts");
        Fila {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and the JSON report.
    fn stop(mut self) -> Value {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "fila run exited with {status}: {}",
            self.stderr()
        );
        let out = std::fs::read_to_string(&self.stdout).unwrap();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("report {out:?}: {e}"))
    }

    /// SIGKILL: a crash, with no chance to flush or commit.
    fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fila run did not stop: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fila {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn produce(topic: &str, values: &[Vec<u8>]) {
    let mut writer = TopicWriter::connect(&brokers(), &[topic]).unwrap();
    let records: Vec<(&str, &[u8])> = values.iter().map(|v| (topic, v.as_slice())).collect();
    writer.send_all(&records).unwrap();
}

/// Reference messages with ids 0..n.
fn produce_messages(topic: &str, n: u64, stages: [u32; 5]) {
    let values: Vec<Vec<u8>> = (0..n).map(|id| message(id, stages, 0)).collect();
    produce(topic, &values);
}

/// Everything in `topic` so far, from the beginning of every partition,
/// reading until at least `at_least` records or `limit`.
fn read_all(topic: &str, at_least: usize, limit: Duration) -> Vec<Vec<u8>> {
    let start: BTreeMap<i32, i64> = TopicReader::end_offsets(&brokers(), topic)
        .unwrap()
        .into_keys()
        .map(|p| (p, 0))
        .collect();
    let mut reader = TopicReader::new(&brokers(), topic, start).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let batch = reader.fetch().unwrap();
        let empty = batch.is_empty();
        out.extend(batch.into_iter().map(|(_, v)| v));
        if (out.len() >= at_least && empty) || Instant::now() > deadline {
            return out;
        }
    }
}

fn ids_of(values: &[Vec<u8>]) -> HashMap<u64, usize> {
    let mut ids = HashMap::new();
    for v in values {
        let r: FibRecord = serde_json::from_slice(v).unwrap();
        *ids.entry(r.id).or_default() += 1;
    }
    ids
}

fn check_fibs(values: &[Vec<u8>]) {
    for v in values {
        let r: FibRecord = serde_json::from_slice(v).unwrap();
        assert_eq!(
            r.fibs(),
            r.stages().map(|n| Some(fib(n))),
            "record {}",
            r.id
        );
    }
}

#[test]
#[ignore = "needs a Kafka broker: run scripts/test, or set FILA_TEST_BROKERS"]
fn thousand_messages_in_give_exactly_a_thousand_correct_ids_out() {
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    let fila = Fila::start(&[
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let load = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args([
            "load",
            "--brokers",
            &brokers(),
            "--input-topic",
            &input,
            "--output-topic",
            &output,
        ])
        .args([
            "--burst",
            "1000",
            "--stages",
            "5,10,18,10,5",
            "--timeout-s",
            "120",
            "--report",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let report: Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(
        (
            report["messages"].as_u64(),
            report["lost"].as_u64(),
            report["duplicates"].as_u64()
        ),
        (Some(1000), Some(0), Some(0)),
        "{report}"
    );
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap()
            <= report["latency_ms"]["p99"].as_f64().unwrap()
    );
    assert!(report.get("ideal").is_none(), "load cannot know w");

    // The live metrics agree, and the uncommitted gauge stays within W.
    let addr = fila
        .stderr()
        .lines()
        .find_map(|l| {
            l.strip_prefix("fila: metrics on http://")?
                .strip_suffix("/metrics")
                .map(str::to_owned)
        })
        .expect("fila printed its metrics address");
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut stream, &mut page).unwrap();
    assert!(
        page.contains("fila_records_total{outcome=\"output\"} 1000"),
        "{page}"
    );
    let uncommitted: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("fila_uncommitted "))
        .expect("a Kafka run reports uncommitted records")
        .parse()
        .unwrap();
    let window: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("fila_window "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uncommitted <= window,
        "{uncommitted} uncommitted with a window of {window}"
    );

    let run_report = fila.stop();
    assert_eq!(run_report["messages"], 1000);
    let out = read_all(&output, 1000, Duration::from_secs(30));
    let ids = ids_of(&out);
    assert_eq!(ids.len(), 1000);
    assert!(ids.values().all(|&n| n == 1), "an id came out twice");
    check_fibs(&out);
}

#[test]
#[ignore = "needs a Kafka broker: run scripts/test, or set FILA_TEST_BROKERS"]
fn stopped_and_crashed_runs_resume_with_nothing_lost_and_at_most_a_window_of_duplicates() {
    const N: u64 = 1500;
    const WINDOW: usize = 8;
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    // The reference stages take about 2 ms a record, so the stream is
    // mid-way when we interrupt it (asserted below).
    produce_messages(&input, N, [10, 20, 30, 20, 10]);
    let window = WINDOW.to_string();
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--window",
        &window,
    ];

    let wait_for_outputs = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while read_all(&output, 0, Duration::ZERO).len() < n {
            assert!(Instant::now() < deadline, "outputs stalled below {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // A clean stop mid-stream: drains, flushes, commits, exits 0.
    let first = Fila::start(&args);
    wait_for_outputs(300);
    let report = first.stop();
    let after_stop = ids_of(&read_all(&output, 0, Duration::from_secs(2)));
    assert!(
        after_stop.values().all(|&n| n == 1),
        "a clean stop duplicated records"
    );
    assert!(
        (report["messages"].as_u64().unwrap() as usize) < N as usize,
        "stopped too late to test a restart"
    );

    // A crash mid-stream: no flush, no final commit.
    let second = Fila::start(&args);
    wait_for_outputs(after_stop.len() + 300);
    second.crash();
    let after_crash = read_all(&output, 0, Duration::from_secs(2)).len();
    assert!(
        after_crash < N as usize,
        "crashed too late to test recovery"
    );

    let third = Fila::start(&args);
    let out = read_all(&output, N as usize, Duration::from_secs(120));
    third.stop();
    let ids = ids_of(&out);
    let missing: Vec<u64> = (0..N).filter(|id| !ids.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    let duplicates: usize = ids.values().map(|&n| n - 1).sum();
    eprintln!(
        "stopped after {} outputs, crashed after {after_crash}, {duplicates} duplicates",
        after_stop.len()
    );
    assert!(
        duplicates <= WINDOW,
        "{duplicates} duplicates with a window of {WINDOW}"
    );
    check_fibs(&out);
}

#[test]
#[ignore = "needs a Kafka broker: run scripts/test, or set FILA_TEST_BROKERS"]
fn malformed_records_go_to_the_dead_letter_topic_and_valid_ones_come_out() {
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let bad: [&[u8]; 4] = [
        b"this is not json",
        br#"{"id": 7, "stage1": 1, "timestamp": 0}"#,
        br#"{"id": "eight", "stage1": 1, "stage2": 1, "stage3": 1, "stage4": 1, "stage5": 1, "timestamp": 0}"#,
        br#"{"id": 9, "stage1": 1, "stage2": 1, "stage3": 99, "stage4": 1, "stage5": 1, "timestamp": 0}"#,
    ];
    let mut values = vec![message(1, [1, 2, 3, 4, 5], 0)];
    values.extend(bad.iter().map(|b| b.to_vec()));
    values.push(message(2, [5, 4, 3, 2, 1], 0));
    produce(&input, &values);

    let fila = Fila::start(&[
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--dlq-topic",
        &dlq,
        "--group",
        &group,
    ]);
    let out = read_all(&output, 2, Duration::from_secs(60));
    let letters = read_all(&dlq, 4, Duration::from_secs(60));
    let report = fila.stop();

    let ids = ids_of(&out);
    assert_eq!(
        ids.keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [1, 2].into()
    );
    check_fibs(&out);
    assert_eq!(letters.len(), 4, "{letters:?}");
    let letters: Vec<Value> = letters
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let payloads: Vec<&str> = letters
        .iter()
        .map(|l| l["payload"].as_str().unwrap())
        .collect();
    for b in bad {
        assert!(
            payloads.contains(&std::str::from_utf8(b).unwrap()),
            "{payloads:?}"
        );
    }
    for l in &letters {
        assert_eq!(l["topic"], input.as_str());
        assert!(!l["reason"].as_str().unwrap().is_empty());
    }
    let reasons: String = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        reasons.contains("missing field")
            && reasons.contains("invalid type")
            && reasons.contains("maximum"),
        "{reasons}"
    );
    // Every record, good or bad, counts as handled.
    assert_eq!(report["messages"], 6);
}

#[test]
#[ignore = "needs a Kafka broker: run scripts/test, or set FILA_TEST_BROKERS"]
fn two_replicas_split_the_partitions_and_emit_every_id_once() {
    const N: u64 = 600;
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    produce_messages(&input, N, [5, 10, 15, 10, 5]);
    let partitions = TopicReader::end_offsets(&brokers(), &input).unwrap();
    assert_eq!(
        partitions.len(),
        2,
        "the test broker must create 2-partition topics"
    );
    assert!(
        partitions.values().all(|&end| end > 0),
        "both partitions hold records: {partitions:?}"
    );

    let common = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
    ];
    let zero = Fila::start(&[&common[..], &["--replica", "0/2"]].concat());
    let one = Fila::start(&[&common[..], &["--replica", "1/2"]].concat());
    let out = read_all(&output, N as usize, Duration::from_secs(120));
    let (r0, r1) = (zero.stop(), one.stop());

    let ids = ids_of(&out);
    assert_eq!(ids.len() as u64, N);
    assert!(ids.values().all(|&n| n == 1), "an id came out twice");
    let (m0, m1) = (
        r0["messages"].as_u64().unwrap(),
        r1["messages"].as_u64().unwrap(),
    );
    assert_eq!(m0 + m1, N);
    assert_eq!(
        (m0, m1),
        (partitions[&0] as u64, partitions[&1] as u64),
        "each replica read its own partition"
    );
}

/// A Kafka 4.x broker refuses the protocol v0 requests of fila's client by
/// closing the connection. The user must get an error that says so, fast.
#[test]
#[ignore = "needs a Kafka 4.x broker: run scripts/test, or set FILA_TEST_BROKERS_4X"]
fn a_kafka_4_broker_gets_a_clear_error_and_no_hang() {
    let brokers_4x = std::env::var("FILA_TEST_BROKERS_4X")
        .expect("FILA_TEST_BROKERS_4X must name a 4.x test broker (scripts/test sets it)");
    for args in [
        &["run", "--source", "kafka", "--brokers", &brokers_4x][..],
        &["load", "--brokers", &brokers_4x, "--burst", "1"],
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_fila"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&brokers_4x) && stderr.contains("4.x"),
            "{args:?}: {stderr}"
        );
        // Not a timing target: a hang would be minutes (the client's
        // 120 s socket timeout), an answer is well under a second.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
