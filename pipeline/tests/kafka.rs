//! `fila run --source kafka` and `fila load` against real Kafka brokers.
//!
//! These need the brokers that `scripts/test` starts (through `scripts/kafka
//! up`): a 3.9 broker named by FILA_TEST_BROKERS and a 4.x broker named by
//! FILA_TEST_BROKERS_4X. They are `#[ignore]`d in a plain `cargo test`;
//! `scripts/test` runs them with `--ignored`. Every wait is bounded.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fila_connectors::{
    create_topic, create_topic_configured, ClientKind, Fetched, KeyedRecord, TopicReader,
    TopicWriter, DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use fila_pipeline::reference::{message, FibRecord};
use serde_json::Value;
use support::*;

/// `fila load` of 1,000 messages through `fila run`, both on `client`: the
/// load client must see exactly 1,000 ids back, and the uncommitted gauge,
/// sampled all through the burst, must stay within its bound.
fn thousand_in_exactly_thousand_out(brokers: &str, client: &str) {
    const BOUND: u64 = 24;
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    let bound = BOUND.to_string();
    let fila = Fila::start(
        brokers,
        &[
            "--kafka-client",
            client,
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
            "--max-uncommitted",
            &bound,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = fila.metrics_addr();
    let load = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["load", "--brokers", brokers, "--kafka-client", client])
        .args(["--input-topic", &input, "--output-topic", &output])
        .args(["--burst", "1000", "--stages", "5,10,18,10,5"])
        .args(["--timeout-s", "120", "--report", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Sample the gauge while the burst runs, not after it drained.
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline {
        let page = scrape(&addr);
        // The gauge appears once the driver has the source's tracker,
        // before it reads a record; every sample from then on counts.
        match metric(&page, "fila_uncommitted") {
            Some(n) => samples.push(n),
            None => assert!(samples.is_empty(), "the gauge went away: {page}"),
        }
        if metric(&page, "fila_records_total{outcome=\"output\"}") == Some(1000) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let load = load.wait_with_output().unwrap();
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
    assert!(report.get("ideal").is_none(), "load cannot know w");
    let most = samples
        .iter()
        .copied()
        .max()
        .expect("the gauge never appeared");
    assert!(
        most <= BOUND,
        "{most} uncommitted with a bound of {BOUND}: {samples:?}"
    );
    assert!(
        most > 0,
        "the gauge never saw a record in flight ({} samples)",
        samples.len()
    );

    let run_report = fila.stop();
    assert_eq!(run_report["messages"], 1000);
    let out = read_all(brokers, &output, 1000, Duration::from_secs(30));
    let ids = ids_of(&out);
    assert_eq!(ids.len(), 1000);
    assert!(ids.values().all(|&n| n == 1), "an id came out twice");
    check_fibs(&out);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_on_kafka_4_thousand_in_exactly_thousand_out() {
    thousand_in_exactly_thousand_out(&brokers_4x(), "rdkafka");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_on_kafka_3_thousand_in_exactly_thousand_out() {
    thousand_in_exactly_thousand_out(&brokers_3x(), "rdkafka");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_on_kafka_3_thousand_in_exactly_thousand_out() {
    thousand_in_exactly_thousand_out(&brokers_3x(), "kafka");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn stopped_and_crashed_runs_resume_with_nothing_lost_and_at_most_a_window_of_duplicates() {
    const N: u64 = 1500;
    const BOUND: usize = 8;
    let brokers = brokers_4x();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    // The input arrives over 15 s, so however fast the machine, the
    // stream is still going when it is interrupted twice (asserted below;
    // a slow machine is mid-way anyway).
    let trickle = Trickle::start(&brokers, &input, N, Duration::from_secs(15));
    let bound = BOUND.to_string();
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--window",
        &bound,
        "--max-uncommitted",
        &bound,
        "--workers",
        "1",
    ];

    // A clean stop mid-stream: drains, flushes, commits, exits 0.
    let first = Fila::start(&brokers, &args);
    wait_for_outputs(&brokers, &output, 300);
    let report = first.stop();
    assert!(
        report["messages"].as_u64().unwrap() < N,
        "the stream ended before the stop"
    );
    let after_stop = read_all(&brokers, &output, 0, Duration::from_secs(2));
    let (_, duplicates) = lost_and_duplicates(&after_stop, 0);
    assert_eq!(duplicates, 0, "a clean stop duplicated records");

    // A crash mid-stream: no flush, no final commit.
    let second = Fila::start(&brokers, &args);
    wait_for_outputs(&brokers, &output, after_stop.len() + 300);
    second.crash();
    let after_crash = count(&brokers, &output);
    assert!(
        after_crash < N as usize,
        "the stream ended before the crash"
    );
    trickle.join();

    let third = Fila::start(&brokers, &args);
    let out = read_every_id(&brokers, &output, N, Duration::from_secs(120));
    third.stop();
    let (missing, duplicates) = lost_and_duplicates(&out, N);
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    eprintln!(
        "stopped after {} outputs, crashed after {after_crash}, {duplicates} duplicates",
        after_stop.len()
    );
    assert!(
        duplicates <= BOUND,
        "{duplicates} duplicates with an uncommitted bound of {BOUND}"
    );
    check_fibs(&out);
}

/// Not JSON, missing fields, wrong types, a stage above the cap: each goes
/// to the dead-letter topic; the valid records around them come out.
const BAD: [&[u8]; 4] = [
    b"this is not json",
    br#"{"id": 7, "stage1": 1, "timestamp": 0}"#,
    br#"{"id": "eight", "stage1": 1, "stage2": 1, "stage3": 1, "stage4": 1, "stage5": 1, "timestamp": 0}"#,
    br#"{"id": 9, "stage1": 1, "stage2": 1, "stage3": 99, "stage4": 1, "stage5": 1, "timestamp": 0}"#,
];

fn header<'a>(record: &'a Fetched, name: &str) -> &'a str {
    let value = record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no header {name}: {record:?}"));
    std::str::from_utf8(&value.1).unwrap()
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn dead_letters_keep_the_original_bytes_and_key_with_the_reason_in_headers() {
    let brokers = brokers_4x();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let good = [
        message(1, [1, 2, 3, 4, 5], 0),
        message(2, [5, 4, 3, 2, 1], 0),
    ];
    let mut records: Vec<KeyedRecord<'_>> =
        vec![(input.as_str(), Some(b"key-1".as_slice()), &good[0])];
    records.extend(
        BAD.iter()
            .map(|b| (input.as_str(), Some(b"bad".as_slice()), *b)),
    );
    records.push((input.as_str(), Some(b"key-2".as_slice()), &good[1]));
    TopicWriter::connect(ClientKind::Rdkafka, &brokers, &[&input])
        .unwrap()
        .send_keyed(&records)
        .unwrap();

    let fila = Fila::start(
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 2, Duration::from_secs(60));
    let letters = read_all(&brokers, &dlq, BAD.len(), Duration::from_secs(60));
    let report = fila.stop();

    // Outputs keep their input's key.
    let keys: BTreeMap<u64, Vec<u8>> = out
        .iter()
        .map(|r| {
            let id = serde_json::from_slice::<FibRecord>(&r.payload).unwrap().id;
            (id, r.key.clone().expect("the output has a key"))
        })
        .collect();
    assert_eq!(
        keys,
        [(1, b"key-1".to_vec()), (2, b"key-2".to_vec())].into()
    );
    check_fibs(&out);

    assert_eq!(letters.len(), BAD.len(), "{letters:?}");
    let mut payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    payloads.sort();
    let mut expected = BAD.to_vec();
    expected.sort();
    assert_eq!(payloads, expected, "dead letters are the input bytes");
    let mut reasons = Vec::new();
    for l in &letters {
        assert_eq!(l.key.as_deref(), Some(b"bad".as_slice()));
        assert_eq!(header(l, DLQ_TOPIC_HEADER), input);
        let partition: i32 = header(l, DLQ_PARTITION_HEADER).parse().unwrap();
        let offset: i64 = header(l, DLQ_OFFSET_HEADER).parse().unwrap();
        assert!(partition >= 0 && offset >= 0);
        reasons.push(header(l, DLQ_REASON_HEADER).to_owned());
    }
    let reasons = reasons.join(" | ");
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
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_dead_letters_are_json_with_the_reason() {
    let brokers = brokers_3x();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let mut values = vec![message(1, [1, 2, 3, 4, 5], 0)];
    values.extend(BAD.iter().map(|b| b.to_vec()));
    values.push(message(2, [5, 4, 3, 2, 1], 0));
    produce(&brokers, &input, &values);

    let fila = Fila::start(
        &brokers,
        &[
            "--kafka-client",
            "kafka",
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 2, Duration::from_secs(60));
    let letters = read_all(&brokers, &dlq, BAD.len(), Duration::from_secs(60));
    let report = fila.stop();

    assert_eq!(ids_of(&out).into_keys().collect::<Vec<_>>().len(), 2);
    check_fibs(&out);
    assert_eq!(letters.len(), BAD.len(), "{letters:?}");
    let letters: Vec<Value> = letters
        .iter()
        .map(|l| serde_json::from_slice(&l.payload).unwrap())
        .collect();
    for b in BAD {
        let text = std::str::from_utf8(b).unwrap();
        assert!(
            letters.iter().any(|l| l["payload"] == text),
            "{text} not dead-lettered: {letters:?}"
        );
    }
    for l in &letters {
        assert_eq!(l["topic"], input.as_str());
        assert!(!l["reason"].as_str().unwrap().is_empty());
    }
    assert_eq!(report["messages"], 6);
}

/// A bad record larger than the dead-letter topic takes: its dead letter
/// keeps what fits and says so, and the run goes on to the record after
/// it. Written whole, the letter would fail every attempt, and the run.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn a_dead_letter_too_large_for_its_topic_is_cut_to_fit() {
    const LIMIT: usize = 20_000;
    let brokers = brokers_4x();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let limit = LIMIT.to_string();
    create_topic_configured(&*brokers, &dlq, 1, &[("max.message.bytes", &limit)]).unwrap();
    create_topic(&*brokers, &input, 1).unwrap();
    // Two in a row: cut to fit one by one, together they would be over
    // the limit in one batch.
    let big = vec![b'x'; 3 * LIMIT];
    produce(
        &brokers,
        &input,
        &[big.clone(), big.clone(), message(1, [1, 2, 3, 4, 5], 0)],
    );

    let fila = Fila::start(
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 1, Duration::from_secs(60));
    let letters = read_all(&brokers, &dlq, 2, Duration::from_secs(30));
    let report = fila.stop();

    check_fibs(&out);
    assert_eq!(ids_of(&out).into_keys().collect::<Vec<_>>(), [1]);
    assert_eq!(letters.len(), 2, "{letters:?}");
    // In either order: not ordered, the two ran at once.
    let mut offsets: Vec<&str> = letters
        .iter()
        .map(|l| header(l, DLQ_OFFSET_HEADER))
        .collect();
    offsets.sort();
    assert_eq!(offsets, ["0", "1"]);
    for letter in &letters {
        assert!(
            !letter.payload.is_empty()
                && letter.payload.len() < LIMIT
                && big.starts_with(&letter.payload),
            "the letter keeps {} bytes",
            letter.payload.len()
        );
        let reason = header(letter, DLQ_REASON_HEADER);
        assert!(
            reason.contains(&format!(
                "keeps the first {} of the record's {} bytes",
                letter.payload.len(),
                big.len()
            )) && reason.contains(&limit),
            "{reason}"
        );
    }
    assert_eq!(report["messages"], 3);
}

/// An output larger than the output topic takes (a `key_totals` total
/// under a long key): its record is dead-lettered, whole, and the run goes
/// on. Written, the output would fail every attempt, and the run.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn a_record_whose_output_is_too_large_for_its_topic_is_dead_lettered() {
    const LIMIT: usize = 20_000;
    let brokers = brokers_4x();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    let limit = LIMIT.to_string();
    create_topic_configured(&*brokers, &output, 1, &[("max.message.bytes", &limit)]).unwrap();
    create_topic(&*brokers, &input, 1).unwrap();
    // The key twice in the output (its key, and in its value): over the
    // limit, where the input is not. Then two outputs under the limit
    // that would be over it in one batch.
    let long = "k".repeat(LIMIT * 2 / 3);
    let (b, c) = ("b".repeat(LIMIT / 3), "c".repeat(LIMIT / 3));
    let records: Vec<KeyedRecord<'_>> = vec![
        (input.as_str(), Some(b"a".as_slice()), b"1".as_slice()),
        (input.as_str(), Some(long.as_bytes()), b"5".as_slice()),
        (input.as_str(), Some(b"a".as_slice()), b"2".as_slice()),
        (input.as_str(), Some(b.as_bytes()), b"7".as_slice()),
        (input.as_str(), Some(c.as_bytes()), b"8".as_slice()),
    ];
    TopicWriter::connect(ClientKind::Rdkafka, &brokers, &[&input])
        .unwrap()
        .send_keyed(&records)
        .unwrap();

    let fila = Fila::start_example(
        "key_totals",
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 4, Duration::from_secs(60));
    let letters = read_all(&brokers, &dlq, 1, Duration::from_secs(30));
    let report = fila.stop();

    // A key's totals in order; keys in any order.
    let mut totals: Vec<Value> = out
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    totals.sort_by_key(|t| t["key"].as_str().unwrap().to_owned());
    assert_eq!(
        totals,
        [
            serde_json::json!({"key": "a", "count": 1, "total": 1}),
            serde_json::json!({"key": "a", "count": 2, "total": 3}),
            serde_json::json!({"key": b, "count": 1, "total": 7}),
            serde_json::json!({"key": c, "count": 1, "total": 8}),
        ]
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.key.as_deref(), Some(long.as_bytes()));
    assert_eq!(letter.payload, b"5");
    assert_eq!(header(letter, DLQ_OFFSET_HEADER), "1");
    let reason = header(letter, DLQ_REASON_HEADER);
    assert!(
        reason.contains("is larger than the") && reason.contains("output topic takes"),
        "{reason}"
    );
    assert_eq!(report["messages"], 5);
}

/// A word longer than the broker's default record limit (1 MiB) goes
/// through the word count's repartition topic: fila makes its own topics
/// take any record its producer sends. (Refused, the record would fail
/// the run at every restart.)
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn a_record_over_the_broker_default_goes_through_a_repartition_topic() {
    let brokers = brokers_4x();
    let (input, output, group) = (unique("lines"), unique("counts"), unique("group"));
    for topic in [&input, &output] {
        create_topic_configured(&*brokers, topic, 1, &[("max.message.bytes", "4000000")]).unwrap();
    }
    let word = "w".repeat(1_200_000);
    let line = serde_json::json!({ "text": format!("{word} short") }).to_string();
    produce(&brokers, &input, &[line.into_bytes()]);

    let fila = Fila::start_example(
        "wordcount",
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 2, Duration::from_secs(60));
    // It stops cleanly (exit 0), having failed no write.
    fila.stop();

    let mut counts: Vec<(String, u64)> = out
        .iter()
        .map(|r| {
            let count: Value = serde_json::from_slice(&r.payload).unwrap();
            let word = count["word"].as_str().unwrap().to_owned();
            (word, count["count"].as_u64().unwrap())
        })
        .collect();
    counts.sort();
    assert_eq!(counts, [("short".to_owned(), 1), (word, 1)]);
}

/// The same with the `kafka` client, which cannot ask the topic for its
/// limit and cuts a dead letter to the broker's default.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_cuts_a_dead_letter_over_the_broker_default() {
    let brokers = brokers_3x();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    // The input takes the record; the dead-letter topic is made by fila,
    // with the broker's default limit (1 MiB).
    create_topic_configured(&*brokers, &input, 1, &[("max.message.bytes", "4000000")]).unwrap();
    let big = "y".repeat(1_500_000);
    produce(
        &brokers,
        &input,
        &[big.clone().into_bytes(), message(1, [1, 2, 3, 4, 5], 0)],
    );

    let fila = Fila::start(
        &brokers,
        &[
            "--kafka-client",
            "kafka",
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--group",
            &group,
        ],
    );
    let out = read_all(&brokers, &output, 1, Duration::from_secs(60));
    let letters = read_all(&brokers, &dlq, 1, Duration::from_secs(30));
    let report = fila.stop();

    assert_eq!(ids_of(&out).into_keys().collect::<Vec<_>>(), [1]);
    assert_eq!(letters.len(), 1);
    let letter: Value = serde_json::from_slice(&letters[0].payload).unwrap();
    let kept = letter["payload"].as_str().unwrap();
    assert!(
        !kept.is_empty() && kept.len() < 1_048_576 && big.starts_with(kept),
        "the letter keeps {} bytes",
        kept.len()
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "keeps the first {} of the record's {} bytes",
            kept.len(),
            big.len()
        )),
        "{reason}"
    );
    assert_eq!(report["messages"], 2);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn two_static_replicas_split_the_partitions_and_emit_every_id_once() {
    const N: u64 = 600;
    let brokers = brokers_3x();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(&brokers, &input, 2).unwrap();
    produce_messages(&brokers, &input, N, [5, 10, 15, 10, 5]);
    let partitions = TopicReader::end_offsets(ClientKind::Rdkafka, &brokers, &input).unwrap();
    assert_eq!(partitions.len(), 2);
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
    let zero = Fila::start(&brokers, &[&common[..], &["--replica", "0/2"]].concat());
    let one = Fila::start(&brokers, &[&common[..], &["--replica", "1/2"]].concat());
    let out = read_every_id(&brokers, &output, N, Duration::from_secs(120));
    let (r0, r1) = (zero.stop(), one.stop());

    let (missing, duplicates) = lost_and_duplicates(&out, N);
    assert!(
        missing.is_empty() && duplicates == 0,
        "{missing:?}, {duplicates}"
    );
    let (m0, m1) = (
        r0["messages"].as_u64().unwrap(),
        r1["messages"].as_u64().unwrap(),
    );
    assert_eq!(
        (m0, m1),
        (partitions[&0] as u64, partitions[&1] as u64),
        "each replica read its own partition"
    );
}

/// Group members for the membership tests: one worker each, so three of
/// them share the machine's cores, and a window of 8.
const MEMBER_WINDOW: usize = 8;

fn member(brokers: &str, input: &str, output: &str, group: &str) -> Fila {
    member_with(brokers, input, output, group, &[])
}

fn member_with(brokers: &str, input: &str, output: &str, group: &str, more: &[&str]) -> Fila {
    let w = MEMBER_WINDOW.to_string();
    let mut args = vec![
        "--input-topic",
        input,
        "--output-topic",
        output,
        "--group",
        group,
        "--workers",
        "1",
        "--window",
        &w,
        "--max-uncommitted",
        &w,
    ];
    args.extend(more);
    Fila::start(brokers, &args)
}

/// A six-partition input topic and names for the output and the group.
fn six_partitions(brokers: &str) -> (String, String, String) {
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    (input, output, group)
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn a_member_killed_mid_burst_loses_nothing_and_duplicates_at_most_its_window() {
    const N: u64 = 3000;
    let brokers = brokers_4x();
    let (input, output, group) = six_partitions(&brokers);
    let mut members: Vec<Fila> = (0..3)
        .map(|_| member(&brokers, &input, &output, &group))
        .collect();
    for m in &mut members {
        m.wait_assigned();
    }
    // The second half waits for the kill, so records keep arriving after
    // it even on a machine busy with other lanes of the test command.
    let mut trickle = Trickle::holding(&brokers, &input, N, Duration::from_secs(20), N / 2);
    wait_for_outputs(&brokers, &output, N as usize / 5);
    members.remove(0).crash();
    let at_crash = count(&brokers, &output);
    trickle.release();
    trickle.join();
    let out = read_every_id(&brokers, &output, N, Duration::from_secs(120));
    for m in members {
        m.stop();
    }
    let (missing, duplicates) = lost_and_duplicates(&out, N);
    eprintln!(
        "3 members, 6 partitions, {N} records: killed one after {at_crash} outputs; \
         lost {}, duplicates {duplicates}",
        missing.len()
    );
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    assert!(
        duplicates <= MEMBER_WINDOW,
        "{duplicates} duplicates; the dead member had at most {MEMBER_WINDOW} uncommitted"
    );
    check_fibs(&out);
}

/// Under exactly-once the metrics count the transactions that reached the
/// broker, each with its commit time: none while the input is idle, though
/// the commit interval comes round ten times a second.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_metrics_count_transactions_not_idle_ticks() {
    const COMMITTED: &str = "fila_commits_total{outcome=\"committed\"}";
    const N: u64 = 200;
    let brokers = brokers_4x();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(&brokers, &input, 2).unwrap();
    let mut fila = Fila::start(
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
            "--exactly-once",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    fila.wait_assigned();
    let addr = fila.metrics_addr();
    std::thread::sleep(Duration::from_secs(1));
    let idle = scrape(&addr);
    assert_eq!(metric(&idle, COMMITTED), Some(0), "{idle}");
    assert_eq!(
        metric(&idle, "fila_commit_seconds_count"),
        Some(0),
        "{idle}"
    );

    produce_messages(&brokers, &input, N, [1, 1, 1, 1, 1]);
    let out = read_every_id(&brokers, &output, N, Duration::from_secs(60));
    // The last commit is visible to a reader a moment before fila counts
    // it: read the page once the two counts agree (or after 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = scrape(&addr);
        let counted = metric(&page, COMMITTED) == metric(&page, "fila_commit_seconds_count");
        if counted || Instant::now() >= deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let committed = metric(&page, COMMITTED).expect("the counter is there");
    assert!(committed >= 1, "{page}");
    assert_eq!(
        metric(&page, "fila_commit_seconds_count"),
        Some(committed),
        "{page}"
    );
    assert_eq!(
        metric(&page, "fila_commits_total{outcome=\"aborted\"}"),
        Some(0),
        "{page}"
    );
    fila.stop();
    assert_eq!(lost_and_duplicates(&out, N), (Vec::new(), 0));
}

/// Under exactly-once a result is visible only once its transaction
/// commits. Small batches, each sent once the one before is visible, at
/// the longest commit interval exactly-once allows (5 s): each is committed
/// as soon as the input goes quiet with its records finished. Were commits
/// made only by the interval, each batch after the first would wait for the
/// next one, 5 s after the commit that showed the batch before, and the
/// three measured would take close to 15 s.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_commits_when_the_input_goes_quiet_not_only_at_the_interval() {
    const N: u64 = 20;
    let brokers = brokers_4x();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(&brokers, &input, 2).unwrap();
    let mut fila = Fila::start(
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
            "--exactly-once",
            "--commit-interval",
            "5s",
        ],
    );
    fila.wait_assigned();
    let mut measured = Duration::ZERO;
    let mut out = Vec::new();
    for batch in 0..4 {
        let ids = batch * N..(batch + 1) * N;
        let values: Vec<Vec<u8>> = ids.map(|id| message(id, [1; 5], 0)).collect();
        let sent = Instant::now();
        produce(&brokers, &input, &values);
        out = read_every_id(&brokers, &output, (batch + 1) * N, Duration::from_secs(60));
        if batch > 0 {
            measured += sent.elapsed();
        }
    }
    let read = lost_and_duplicates(&out, 4 * N);
    fila.stop();
    assert_eq!(read, (Vec::new(), 0));
    assert!(
        measured < Duration::from_secs(10),
        "three batches took {measured:?} to be visible: committed by the interval only"
    );
}

/// Exactly-once with three group members, one killed mid-stream and one
/// joining after: its partitions move, the open transactions of the dead
/// member are aborted (its outputs never seen), and a reader of committed
/// records sees every record once. Every rebalance aborts the open
/// transaction of the members that lose partitions.
fn exactly_once_members_killed_and_joining(brokers: &str) {
    const N: u64 = 3000;
    let (input, output, group) = six_partitions(brokers);
    let eos = ["--exactly-once"];
    let mut members: Vec<Fila> = (0..3)
        .map(|_| member_with(brokers, &input, &output, &group, &eos))
        .collect();
    for m in &mut members {
        m.wait_assigned();
    }
    // As above: the second half waits for the kill.
    let mut trickle = Trickle::holding(brokers, &input, N, Duration::from_secs(24), N / 2);
    wait_for_outputs(brokers, &output, N as usize / 5);
    members.remove(0).crash();
    let at_crash = count(brokers, &output);
    trickle.release();
    let mut newcomer = member_with(brokers, &input, &output, &group, &eos);
    newcomer.wait_assigned();
    members.push(newcomer);
    trickle.join();
    let out = read_every_id(brokers, &output, N, Duration::from_secs(120));
    let (reports, logs): (Vec<Value>, Vec<String>) =
        members.into_iter().map(Fila::stop_with_stderr).unzip();
    let out_after = read_all(brokers, &output, out.len(), Duration::from_secs(5));
    let (missing, duplicates) = lost_and_duplicates(&out_after, N);
    if !missing.is_empty() || duplicates > 0 {
        for (i, log) in logs.iter().enumerate() {
            eprintln!("member {i}:\n{log}");
        }
    }
    let handled: Vec<u64> = reports
        .iter()
        .map(|r| r["messages"].as_u64().unwrap())
        .collect();
    eprintln!(
        "exactly-once, 3 members, 6 partitions, {N} records: killed one after {at_crash} output \
         offsets, one joined; the members handled {handled:?}; lost {}, duplicates {duplicates}",
        missing.len()
    );
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    assert_eq!(duplicates, 0, "exactly-once wrote records twice");
    check_fibs(&out_after);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_kip848_members_killed_and_joining_write_each_record_once() {
    exactly_once_members_killed_and_joining(&brokers_4x());
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_classic_members_killed_and_joining_write_each_record_once() {
    exactly_once_members_killed_and_joining(&brokers_3x());
}

fn a_member_joining_mid_burst_takes_partitions_and_nothing_is_lost(brokers: &str) {
    const N: u64 = 2400;
    let (input, output, group) = six_partitions(brokers);
    let mut first = member(brokers, &input, &output, &group);
    first.wait_assigned();
    // A classic group's join waits for the first member's next heartbeat
    // (3 s), so the stream runs long enough for a slow, busy machine.
    let trickle = Trickle::start(brokers, &input, N, Duration::from_secs(16));
    wait_for_outputs(brokers, &output, N as usize / 6);
    let mut second = member(brokers, &input, &output, &group);
    second.wait_assigned();
    let at_join = count(brokers, &output);
    assert!(at_join < N as usize, "joined after the burst drained");
    trickle.join();
    let out = read_every_id(brokers, &output, N, Duration::from_secs(120));
    let (r1, r2) = (first.stop(), second.stop());
    let (missing, duplicates) = lost_and_duplicates(&out, N);
    eprintln!(
        "second member joined after {at_join} outputs; it handled {}, the first {}; \
         lost {}, duplicates {duplicates}",
        r2["messages"],
        r1["messages"],
        missing.len()
    );
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    assert!(
        r2["messages"].as_u64().unwrap() > 0,
        "the second member got no records"
    );
    // Revoked partitions drain and commit before they move.
    assert_eq!(duplicates, 0);
    check_fibs(&out);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kip848_member_joining_mid_burst_takes_partitions_and_nothing_is_lost() {
    a_member_joining_mid_burst_takes_partitions_and_nothing_is_lost(&brokers_4x());
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn classic_member_joining_mid_burst_takes_partitions_and_nothing_is_lost() {
    a_member_joining_mid_burst_takes_partitions_and_nothing_is_lost(&brokers_3x());
}

fn a_member_stopped_by_sigterm_hands_over_with_no_duplicates(brokers: &str) {
    const N: u64 = 2400;
    let (input, output, group) = six_partitions(brokers);
    let mut staying = member(brokers, &input, &output, &group);
    let mut leaving = member(brokers, &input, &output, &group);
    staying.wait_assigned();
    leaving.wait_assigned();
    // The second half waits for the stop, so records keep arriving after
    // it even on a machine busy with other lanes of the test command.
    let mut trickle = Trickle::holding(brokers, &input, N, Duration::from_secs(20), N / 2);
    wait_for_outputs(brokers, &output, N as usize / 5);
    let report = leaving.stop_within(Duration::from_secs(10));
    let at_stop = count(brokers, &output);
    trickle.release();
    trickle.join();
    let out = read_every_id(brokers, &output, N, Duration::from_secs(120));
    let stayed = staying.stop();
    let (missing, duplicates) = lost_and_duplicates(&out, N);
    eprintln!(
        "a member stopped after handling {} records ({at_stop} outputs in all), the other \
         handled {}; lost {}, duplicates {duplicates}",
        report["messages"],
        stayed["messages"],
        missing.len()
    );
    assert!(missing.is_empty(), "lost ids: {missing:?}");
    assert!(
        report["messages"].as_u64().unwrap() > 0,
        "it had no partitions"
    );
    assert_eq!(duplicates, 0);
    check_fibs(&out);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kip848_member_stopped_by_sigterm_hands_over_with_no_duplicates() {
    a_member_stopped_by_sigterm_hands_over_with_no_duplicates(&brokers_4x());
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn classic_member_stopped_by_sigterm_hands_over_with_no_duplicates() {
    a_member_stopped_by_sigterm_hands_over_with_no_duplicates(&brokers_3x());
}

/// The `kafka` client speaks protocol v0, which a Kafka 4.x broker refuses
/// by closing the connection. The user must get an error that says so,
/// fast, and points to rdkafka.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn the_kafka_client_on_a_kafka_4_broker_gets_a_clear_error_and_no_hang() {
    let brokers = brokers_4x();
    for args in [
        &[
            "run",
            "--source",
            "kafka",
            "--kafka-client",
            "kafka",
            "--brokers",
            &brokers,
        ][..],
        &[
            "load",
            "--kafka-client",
            "kafka",
            "--brokers",
            &brokers,
            "--burst",
            "1",
        ],
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
            stderr.contains(&brokers) && stderr.contains("4.x") && stderr.contains("rdkafka"),
            "{args:?}: {stderr}"
        );
        // Not a timing target: a hang would be minutes, an answer is well
        // under a second.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// GET `path` from `addr`: the status line's code and the body.
fn probe(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    let code = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned());
    (code, body.unwrap_or_default())
}

/// Polls `/readyz` until it answers 200: the reasons it gave before.
fn not_ready_until_ready(addr: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut reasons = Vec::new();
    loop {
        match probe(addr, "/readyz") {
            (200, _) => return reasons,
            (503, reason) => {
                if reasons.last() != Some(&reason) {
                    reasons.push(reason);
                }
            }
            other => panic!("/readyz answered {other:?}"),
        }
        assert!(Instant::now() < deadline, "not ready: {reasons:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What an operator watches: `/readyz` says "not ready" while a member
/// joins and while a rebalance takes partitions from it, and "ready" while
/// it consumes; consumer lag, scraped from `/metrics`, rises during a
/// burst and falls to 0 after it.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn readiness_and_consumer_lag_follow_a_member_through_a_burst_and_a_rebalance() {
    const N: u64 = 6000;
    let brokers = brokers_4x();
    let (input, output, group) = six_partitions(&brokers);
    let metrics = ["--metrics-addr", "127.0.0.1:0"];
    let first = member_with(&brokers, &input, &output, &group, &metrics);
    let addr = first.metrics_addr();
    let joining = not_ready_until_ready(&addr, Duration::from_secs(60));
    assert!(
        joining
            .iter()
            .any(|r| r.contains("joining the consumer group") || r.starts_with("starting")),
        "{joining:?}"
    );
    assert_eq!(probe(&addr, "/healthz").0, 200);

    // A burst faster than one worker runs it: the lag rises.
    let burst = Trickle::start(&brokers, &input, N, Duration::from_secs(4));
    let lag = |page: &str| metric(page, "fila_consumer_total_lag_records");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0;
    while peak < 500 && Instant::now() < deadline {
        peak = peak.max(lag(&scrape(&addr)).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(peak >= 500, "the lag never rose: {}", scrape(&addr));

    // A second member joins while the first is busy: the first gives up
    // partitions, and is not ready while it drains and commits them. That
    // spell can be a few milliseconds, shorter than a probe takes on a busy
    // machine: the member counts its spells, and the probes are a sample.
    let unready = |page: &str| metric(page, "fila_source_not_ready_total").unwrap();
    let spells_before = unready(&scrape(&addr));
    let mut second = member_with(&brokers, &input, &output, &group, &metrics);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut during = Vec::new();
    while !second.stderr().contains("partitions assigned") && Instant::now() < deadline {
        if let (503, reason) = probe(&addr, "/readyz") {
            if during.last() != Some(&reason) {
                during.push(reason);
            }
        }
    }
    second.wait_assigned();
    // The first member's revocation began before the second was given
    // anything: its spell is counted by now.
    let spells_after = unready(&scrape(&addr));
    assert!(
        spells_after > spells_before,
        "never not ready during the rebalance: {spells_before} spells before, \
         {spells_after} after; probes saw {during:?}"
    );
    assert!(
        during.iter().all(|r| r.contains("rebalance")),
        "not ready for another reason during the rebalance: {during:?}"
    );
    assert!(not_ready_until_ready(&addr, Duration::from_secs(30)).len() <= 1);
    burst.join();

    // Every record through: the lag falls to 0 on both members.
    wait_for_outputs(&brokers, &output, N as usize);
    let second_addr = second.metrics_addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let lags = [lag(&scrape(&addr)), lag(&scrape(&second_addr))];
        if lags == [Some(0), Some(0)] || Instant::now() > deadline {
            break lags;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lag_lines = |addr: &str| -> String {
        let page = scrape(addr);
        page.lines()
            .filter(|l| l.starts_with("fila_consumer"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        settled,
        [Some(0), Some(0)],
        "first:\n{}\nsecond:\n{}",
        lag_lines(&addr),
        lag_lines(&second_addr)
    );
    let page = scrape(&addr);
    assert!(
        metric(&page, "fila_rebalances_total").unwrap() >= 2,
        "{page}"
    );
    assert_eq!(
        metric(&page, "fila_input_records_total"),
        metric(&page, "fila_records_total{outcome=\"output\"}")
    );
    eprintln!(
        "peak lag {peak}; not-ready spells {spells_before} before the rebalance, \
         {spells_after} after; probes saw {during:?}"
    );
    let (r1, r2) = (first.stop(), second.stop());
    let out = read_every_id(&brokers, &output, N, Duration::from_secs(60));
    let (missing, _) = lost_and_duplicates(&out, N);
    assert!(missing.is_empty(), "lost {} ids", missing.len());
    assert!(r2["messages"].as_u64().unwrap() > 0, "{r1} {r2}");
}
