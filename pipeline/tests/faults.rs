//! Faults against real Kafka brokers: a broker restarted or stalled in the
//! middle of a burst, `fila run` killed at random points, stopped with
//! SIGTERM, and fed hostile input. Each must lose nothing, and duplicate at
//! most what delivery.md's bound allows.
//!
//! These stop and stall the brokers that `scripts/test` starts, so they
//! run after the other Kafka tests, and each holds its broker for itself
//! ([`hold`]): tests on the 3.9 and the 4.x broker run side by side, never
//! two on one broker. They are `#[ignore]`d in a plain `cargo test`.
//! Every wait is bounded, and a broker stopped or stalled by a test is
//! started or resumed again even if the test fails.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use fila_connectors::{
    commit_group_offsets, create_topic, ClientKind, Fetched, TopicReader, DLQ_OFFSET_HEADER,
    DLQ_REASON_HEADER,
};
use fila_pipeline::reference::{message, FibRecord};
use support::*;

/// The window of every run here.
const W: usize = 32;

/// The replay bound (`--max-uncommitted`) of every run here: a crash or a
/// fault duplicates at most this many records. Offsets are committed by
/// time (the default `--commit-interval`); the bound is above what a
/// commit interval of these jobs reads, so it holds reading back only
/// while a fault keeps commits from landing.
const U: usize = 1000;

/// Light stages: the burst is bound by Kafka, not by the CPU, so a
/// 10,000-record burst takes seconds.
const LIGHT: [u32; 5] = [20, 20, 20, 20, 20];

/// Stages of about half a millisecond a record: the crash tests' pace.
const PACED: [u32; 5] = [24, 24, 24, 24, 24];

const N: u64 = 10_000;

/// Which broker version a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kafka {
    V3,
    V4,
}

/// The brokers of `version` the fault tests may stop and stall: the list
/// in FILA_TEST_FAULT_BROKERS(_4X), else the one test broker.
fn pool(version: Kafka) -> Vec<String> {
    let (var, fallback) = match version {
        Kafka::V3 => ("FILA_TEST_FAULT_BROKERS", brokers_3x as fn() -> String),
        Kafka::V4 => ("FILA_TEST_FAULT_BROKERS_4X", brokers_4x as fn() -> String),
    };
    match std::env::var(var) {
        Ok(list) => list.split(',').map(str::to_owned).collect(),
        Err(_) => vec![fallback()],
    }
}

/// A broker of the pool, for this test alone until dropped.
struct Held {
    brokers: String,
}

static BUSY: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FREED: Condvar = Condvar::new();

/// Waits for a broker of `version` that no other test holds. A test that
/// failed holding one left it running again (`Stopped`, `Stalled`), so the
/// next may go on.
fn hold(version: Kafka) -> Held {
    let pool = pool(version);
    let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(free) = pool.iter().find(|b| !busy.contains(b)) {
            busy.push(free.clone());
            let held = Held {
                brokers: free.clone(),
            };
            // Held frees the broker even if the wait below fails.
            drop(busy);
            ready_coordinator(&held.brokers);
            return held;
        }
        busy = FREED.wait(busy).unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|b| *b != self.brokers);
        FREED.notify_all();
    }
}

/// A broker stopped by `scripts/kafka stop`, started again on its data
/// when dropped (so a failing test leaves it running for the next).
struct Stopped {
    port: String,
    started: bool,
}

impl Stopped {
    fn stop(brokers: &str) -> Stopped {
        let port = port_of(brokers);
        scripts_kafka(&["stop", "--port", &port]);
        Stopped {
            port,
            started: false,
        }
    }

    fn start(mut self) {
        scripts_kafka(&["start", "--port", &self.port]);
        self.started = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka"))
                .args(["start", "--port", &self.port])
                .output();
        }
    }
}

/// A broker stalled with SIGSTOP, resumed with SIGCONT when dropped.
struct Stalled(i32);

impl Stalled {
    fn stall(brokers: &str) -> Stalled {
        let pid: i32 = scripts_kafka(&["status", "--port", &port_of(brokers)])
            .trim()
            .parse()
            .expect("scripts/kafka status prints the broker's PID");
        // SAFETY: kill(2) with a PID that scripts/kafka just checked is
        // the test broker it started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stalled(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: as above; the broker is only resumed.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn run_args<'a>(input: &'a str, output: &'a str, group: &'a str) -> Vec<&'a str> {
    static W_FLAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| W.to_string());
    static U_FLAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| U.to_string());
    vec![
        "--input-topic",
        input,
        "--output-topic",
        output,
        "--group",
        group,
        "--window",
        &W_FLAG,
        "--max-uncommitted",
        &U_FLAG,
    ]
}

/// Reads `output` until every one of the `n` ids is there (or fails, with
/// `log`, fila's log, in the message); the records and the duplicates.
fn every_id(
    brokers: &str,
    output: &str,
    n: u64,
    log: &dyn Fn() -> String,
) -> (Vec<Fetched>, usize) {
    // Riding out a fault on a machine busy with the other lanes of the
    // test command can take minutes: the broker loads its coordinators'
    // state before it serves a group or a transaction again, and a group
    // member whose session lapsed meanwhile joins again.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Right after a broker fault the reader itself may fail for a
        // moment (the broker is not leading its partitions again yet).
        let out = match try_read_all(brokers, output, n as usize, Duration::from_secs(5)) {
            Ok(out) => out,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading {output} failed, retrying: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => panic!("reading {output}: {e}"),
        };
        let (missing, duplicates) = lost_and_duplicates(&out, n);
        if missing.is_empty() {
            check_fibs(&out);
            return (out, duplicates);
        }
        assert!(
            Instant::now() < deadline,
            "{} ids lost, the first {:?}; {} records read, and the output's end offsets sum \
             to {} (records written whether committed or not, and transaction markers); fila \
             logged:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            out.len(),
            TopicReader::end_offsets(ClientKind::Rdkafka, brokers, output).map_or_else(
                |e| format!("unknown ({e})"),
                |o| o.values().sum::<i64>().to_string()
            ),
            log()
        );
    }
}

/// Stops the broker (`restart`) or stalls it (otherwise) for 10 s while a
/// 10,000-record burst is under way. fila must keep running and lose
/// nothing; with `exactly_once`, write nothing twice either. Under
/// exactly-once the fault lasts 15 s, longer than a transaction may stay
/// open: the broker aborts the open one (and a 4.x broker fences its
/// producer), which fila must outlive.
fn broker_fault_mid_burst(version: Kafka, client: &str, restart: bool, exactly_once: bool) {
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    produce_messages(brokers, &input, N, LIGHT);
    let mut args = run_args(&input, &output, &group);
    args.extend(["--kafka-client", client]);
    // A broker restarted on a machine busy with the other lanes of the
    // test command can take several times the fault itself to answer
    // again: what is tested is riding the fault out, not the default
    // retry timeout, so allow for a slow restart.
    args.extend(["--kafka-retry-timeout", "180s"]);
    if exactly_once {
        args.push("--exactly-once");
    }
    if client == "kafka" {
        args.extend(["--replica", "0/1"]);
    }
    let mut fila = Fila::start(brokers, &args);
    wait_for_outputs(brokers, &output, 2_000);
    let before = count(brokers, &output);
    let fault = Duration::from_secs(if exactly_once { 15 } else { 10 });
    if restart {
        let stopped = Stopped::stop(brokers);
        std::thread::sleep(fault);
        assert!(fila.running(), "fila exited: {}", fila.stderr());
        stopped.start();
    } else {
        let stalled = Stalled::stall(brokers);
        std::thread::sleep(fault);
        assert!(fila.running(), "fila exited: {}", fila.stderr());
        drop(stalled);
    }
    every_id(brokers, &output, N, &|| fila.stderr());
    assert!(fila.running(), "fila exited: {}", fila.stderr());
    let (report, log) = fila.stop_with_stderr();
    let (out, duplicates) = every_id(brokers, &output, N, &String::new);
    eprintln!(
        "{client}{}, broker {}: {before} outputs before the fault, {} after, {duplicates} \
         duplicates (bound {}); fila read {}",
        if exactly_once { " exactly-once" } else { "" },
        if restart { "restarted" } else { "stalled" },
        out.len(),
        if exactly_once { 0 } else { U },
        report["messages"]
    );
    if exactly_once {
        assert_eq!(
            duplicates, 0,
            "exactly-once wrote records twice; fila logged:\n{log}"
        );
    }
    assert!(
        out.len() <= N as usize + U,
        "{} outputs for {N} ids: more duplicates than the replay bound {U}",
        out.len()
    );
    assert!(
        duplicates <= U,
        "{duplicates} duplicates with a replay bound of {U}"
    );
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_rides_out_a_broker_restart_mid_burst() {
    broker_fault_mid_burst(Kafka::V4, "rdkafka", true, false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_rides_out_a_broker_restart_mid_burst() {
    broker_fault_mid_burst(Kafka::V3, "kafka", true, false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_rides_out_a_broker_stall_mid_burst() {
    broker_fault_mid_burst(Kafka::V4, "rdkafka", false, false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_rides_out_a_broker_stall_mid_burst() {
    broker_fault_mid_burst(Kafka::V3, "kafka", false, false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_rides_out_a_broker_restart_with_no_duplicate() {
    broker_fault_mid_burst(Kafka::V3, "rdkafka", true, true);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_rides_out_a_broker_stall_with_no_duplicate() {
    broker_fault_mid_burst(Kafka::V4, "rdkafka", false, true);
}

/// A small generator for the crash points, seeded from the clock and
/// printed, so a failing sequence can be told apart from another.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts a run with `start` and kills it (`kill -9`) once `output` holds
/// a random count of records more than at its start, within `past`, or
/// once it holds `at_most` (the whole stream, markers included);
/// `crashes` times. Returns the seed and the output's count after each
/// crash.
fn crash_loop(
    brokers: &str,
    output: &str,
    crashes: usize,
    past: std::ops::RangeInclusive<usize>,
    at_most: usize,
    start: impl Fn() -> Fila,
) -> (u64, Vec<usize>) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = XorShift(seed);
    let mut points = Vec::new();
    for _ in 0..crashes {
        let fila = start();
        let spread = (past.end() - past.start() + 1) as u64;
        let point =
            (count(brokers, output) + past.start() + rng.below(spread) as usize).min(at_most);
        let deadline = Instant::now() + Duration::from_secs(90);
        while count(brokers, output) < point {
            assert!(
                Instant::now() < deadline,
                "outputs stalled below {point} after crashes at {points:?}: {}",
                fila.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        fila.crash();
        points.push(count(brokers, output));
    }
    (seed, points)
}

/// `kill -9` of `fila run` at 20 random points of a 10,000-record burst,
/// with a restart after each: nothing lost, at most the replay bound U of
/// duplicates per crash; with `exactly_once`, no duplicate at all to a
/// reader of committed records.
fn crashes_at_random_points(version: Kafka, client: &str, exactly_once: bool) {
    const CRASHES: usize = 20;
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    // Stages that bind the burst by the CPU (a few thousand records a
    // second here), slow enough that reading the output's count between
    // crashes overshoots little, and quick enough to keep the test short.
    produce_messages(brokers, &input, N, PACED);
    let mut args = run_args(&input, &output, &group);
    // Static assignment: a restarted process reads at once, instead of
    // waiting for the group to expire the member it replaces. One worker:
    // the pace is then one core's whatever the machine, so the outputs
    // counted between crashes overshoot the crash point by about as much
    // on any machine.
    args.extend([
        "--kafka-client",
        client,
        "--replica",
        "0/1",
        "--workers",
        "1",
    ]);
    if exactly_once {
        args.push("--exactly-once");
    }
    // 50 to 200 outputs past the last crash: 20 crashes fall inside the
    // burst whatever the machine's speed.
    let (seed, points) = crash_loop(brokers, &output, CRASHES, 50..=200, N as usize, || {
        Fila::start(brokers, &args)
    });
    // The counts include duplicates (and under exactly-once, aborted
    // records and markers): whether the burst was still running at the
    // last crash is whether some id had not come out yet.
    let starts = TopicReader::end_offsets(ClientKind::Rdkafka, brokers, &output)
        .unwrap()
        .into_keys()
        .map(|p| (p, 0))
        .collect();
    let out_by_then = ids_of(&read_to_end(brokers, &output, starts)).len();
    assert!(
        out_by_then < N as usize,
        "the burst ended before the last crash: every id was out after crashes at {points:?}"
    );
    let last = Fila::start(brokers, &args);
    every_id(brokers, &output, N, &|| last.stderr());
    last.stop();
    // Read again once nothing runs: every commit has landed.
    let (out, duplicates) = every_id(brokers, &output, N, &String::new);
    let bound = if exactly_once { 0 } else { CRASHES * U };
    eprintln!(
        "{client}{}: {CRASHES} crashes (seed {seed}) after {points:?} outputs: 0 lost, \
         {duplicates} duplicates in {} outputs (bound {bound})",
        if exactly_once { " exactly-once" } else { "" },
        out.len()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {CRASHES} crashes with a bound of {bound}"
    );
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_crashed_at_20_random_points_loses_nothing() {
    crashes_at_random_points(Kafka::V4, "rdkafka", false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_on_kafka_4_crashed_at_20_random_points_writes_each_record_once() {
    crashes_at_random_points(Kafka::V4, "rdkafka", true);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_on_kafka_3_crashed_at_20_random_points_writes_each_record_once() {
    crashes_at_random_points(Kafka::V3, "rdkafka", true);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_crashed_at_20_random_points_loses_nothing() {
    crashes_at_random_points(Kafka::V3, "kafka", false);
}

/// SIGTERM in the middle of a burst: exit 0 within 10 s, with what was in
/// flight drained and committed, so a restart duplicates nothing.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn sigterm_mid_burst_drains_commits_and_exits_within_10_s() {
    sigterm_mid_burst(Kafka::V4, false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_sigterm_mid_burst_commits_and_exits_within_10_s() {
    sigterm_mid_burst(Kafka::V3, true);
}

/// SIGTERM while fila is still starting (it has begun to connect, and
/// has not yet set up its transactions, changelogs and restore reader):
/// the signal is held until the run starts, which then stops at once and
/// exits 0 with its report, as a stop in the middle of a run does.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn sigterm_during_start_up_exits_cleanly() {
    let held = hold(Kafka::V4);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--exactly-once",
    ];
    let mut fila = Fila::start_example("key_totals", brokers, &args);
    // Logged as the source is made, before the sink, the changelog topic
    // and the restore reader.
    fila.wait_logged("reading topic=");
    let report = fila.stop_within(Duration::from_secs(30));
    eprintln!("stopped during start-up; the report: {report}");
    assert_eq!(report["messages"], 0, "{report}");
}

fn sigterm_mid_burst(version: Kafka, exactly_once: bool) {
    let held = hold(version);
    let brokers = held.brokers.clone();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    produce_messages(&brokers, &input, N, LIGHT);
    let mut args = run_args(&input, &output, &group);
    if exactly_once {
        args.push("--exactly-once");
    }
    let first = Fila::start(&brokers, &args);
    wait_for_outputs(&brokers, &output, 3_000);
    let report = first.stop_within(Duration::from_secs(10));
    let stopped_at = count(&brokers, &output);
    assert!(
        stopped_at < N as usize,
        "the burst ended before SIGTERM ({stopped_at} outputs)"
    );
    let second = Fila::start(&brokers, &args);
    every_id(&brokers, &output, N, &|| second.stderr());
    second.stop();
    let (out, duplicates) = every_id(&brokers, &output, N, &String::new);
    eprintln!(
        "SIGTERM after {stopped_at} outputs (the run read {}), {} outputs in all, \
         {duplicates} duplicates",
        report["messages"],
        out.len()
    );
    assert_eq!(duplicates, 0, "a clean stop must commit all it wrote");
}

/// Every kind of bad record the issue of hostile input names. Each must go
/// to the dead-letter topic with a reason, unchanged.
fn hostile_records() -> Vec<(&'static str, Vec<u8>)> {
    let valid = |id: u64| String::from_utf8(message(id, LIGHT, 0)).unwrap();
    let with = |field: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&message(1, LIGHT, 0)).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        serde_json::to_vec(&v).unwrap()
    };
    // 10,000 levels where the id should be.
    let deep = valid(1).replacen(
        r#""id":1"#,
        &format!(r#""id":{}{}"#, "[".repeat(10_000), "]".repeat(10_000)),
        1,
    );
    vec![
        ("not UTF-8", b"\xff\xfe\x00\x81 not text".to_vec()),
        ("not JSON", b"this is not json".to_vec()),
        ("empty", Vec::new()),
        ("whitespace only", b" \n\t  ".to_vec()),
        ("an array", b"[1, 2, 3]".to_vec()),
        ("a number", b"42".to_vec()),
        ("a string", br#""fib please""#.to_vec()),
        ("null", b"null".to_vec()),
        (
            "missing fields",
            br#"{"id": 7, "stage1": 1, "timestamp": 0}"#.to_vec(),
        ),
        ("a string id", with("id", r#""eight""#)),
        ("a float id", with("id", "1.5")),
        ("a float stage", with("stage2", "2.5")),
        ("a negative id", with("id", "-3")),
        ("a negative stage", with("stage4", "-1")),
        (
            "duplicate keys",
            valid(1).replacen("{", r#"{"id": 2, "#, 1).into_bytes(),
        ),
        (
            "a byte-order mark",
            [b"\xef\xbb\xbf".as_slice(), valid(1).as_bytes()].concat(),
        ),
        ("deeply nested JSON", deep.into_bytes()),
        ("a stage above the cap", with("stage3", "99")),
        ("about 1 MiB", vec![b'x'; 1_000_000]),
    ]
}

/// A dead letter's source offset and reason, and the original bytes as
/// the client carries them: in headers beside the unchanged value on
/// rdkafka; in a JSON envelope with the value as text on the `kafka`
/// client (protocol v0 has no headers).
fn letter(client: &str, l: &Fetched) -> (i64, String, Vec<u8>) {
    if client == "kafka" {
        let v: serde_json::Value = serde_json::from_slice(&l.payload).expect("a JSON dead letter");
        let text = v["payload"].as_str().expect("the value as text");
        return (
            v["offset"].as_i64().expect("an offset"),
            v["reason"].as_str().expect("a reason").to_owned(),
            text.as_bytes().to_vec(),
        );
    }
    let header = |name: &str| {
        l.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    (
        header(DLQ_OFFSET_HEADER).parse().unwrap(),
        header(DLQ_REASON_HEADER),
        l.payload.clone(),
    )
}

/// Hostile records between valid ones, on one partition so the order is
/// known: every bad record reaches the dead-letter topic with a reason
/// (unchanged on rdkafka; as text on the `kafka` client), every valid one
/// comes out computed, and the run never stops.
fn hostile_input(version: Kafka, client: &str, exactly_once: bool) {
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("g"));
    create_topic(brokers, &input, 1).unwrap();
    let bad = hostile_records();
    let mut values = Vec::new();
    for (i, (_, record)) in bad.iter().enumerate() {
        values.push(message(i as u64, LIGHT, 0));
        values.push(record.clone());
    }
    let valid = bad.len() as u64 + 1;
    values.push(message(bad.len() as u64, LIGHT, 0));
    produce(brokers, &input, &values);

    let mut args = run_args(&input, &output, &group);
    args.extend(["--dlq-topic", &dlq, "--kafka-client", client]);
    if client == "kafka" {
        args.extend(["--replica", "0/1"]);
    }
    if exactly_once {
        // Dead letters go in the same transactions as the outputs.
        args.push("--exactly-once");
    }
    let mut fila = Fila::start(brokers, &args);
    let (out, duplicates) = every_id(brokers, &output, valid, &|| fila.stderr());
    let letters = read_all(brokers, &dlq, bad.len(), Duration::from_secs(60));
    assert!(fila.running(), "fila stopped: {}", fila.stderr());
    assert_eq!(
        letters.len(),
        bad.len(),
        "one dead letter per bad record\n{}",
        fila.stderr()
    );
    let report = fila.stop();
    assert_eq!(duplicates, 0);
    assert_eq!(out.len() as u64, valid, "only the valid records come out");

    let mut letters: Vec<(i64, String, Vec<u8>)> =
        letters.iter().map(|l| letter(client, l)).collect();
    letters.sort_by_key(|(offset, _, _)| *offset);
    for (i, ((what, record), (offset, reason, original))) in bad.iter().zip(&letters).enumerate() {
        // Bad record i sits at offset 2i + 1, between valid ones.
        assert_eq!(*offset, 2 * i as i64 + 1, "{what}: the wrong offset");
        let expected = if client == "kafka" {
            String::from_utf8_lossy(record).into_owned().into_bytes()
        } else {
            record.clone()
        };
        assert!(
            *original == expected,
            "{what}: the dead letter is not the original"
        );
        assert!(!reason.is_empty(), "{what}: empty reason");
        eprintln!(
            "{client}: {what}: {}",
            reason.chars().take(100).collect::<String>()
        );
    }
    assert_eq!(report["messages"].as_u64(), Some(valid + bad.len() as u64));
    for r in &out {
        let r: FibRecord = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(r.stages(), LIGHT);
    }
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_hostile_input_goes_to_the_dead_letter_topic_and_the_rest_comes_out() {
    hostile_input(Kafka::V4, "rdkafka", false);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn exactly_once_dead_letters_hostile_input_in_its_transactions() {
    hostile_input(Kafka::V3, "rdkafka", true);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_hostile_input_goes_to_the_dead_letter_topic_and_the_rest_comes_out() {
    hostile_input(Kafka::V3, "kafka", false);
}

/// A committed offset out of range (here: past the end of the partition,
/// as after a topic is made anew): `--offset-reset error` stops with an
/// error naming the partition; `earliest` logs the reset and reads it all.
fn offset_out_of_range(version: Kafka, client: &str) {
    const COUNT: u64 = 20;
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let kind = if client == "kafka" {
        ClientKind::Kafka
    } else {
        ClientKind::Rdkafka
    };
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 1).unwrap();
    produce_messages(brokers, &input, COUNT, LIGHT);
    commit_group_offsets(kind, brokers, &group, &input, &[(0, 1_000)]).unwrap();
    let mut args = run_args(&input, &output, &group);
    args.extend(["--kafka-client", client, "--replica", "0/1"]);

    let mut strict = args.clone();
    strict.extend(["--offset-reset", "error"]);
    let mut fila = Fila::start(brokers, &strict);
    let status = fila.wait(Duration::from_secs(60));
    let stderr = fila.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("partition 0"), "{stderr}");
    assert_eq!(count(brokers, &output), 0, "{stderr}");

    let mut lenient = args.clone();
    lenient.extend(["--offset-reset", "earliest"]);
    let fila = Fila::start(brokers, &lenient);
    let (out, duplicates) = every_id(brokers, &output, COUNT, &|| fila.stderr());
    let stderr = fila.stderr();
    fila.stop();
    assert_eq!((out.len(), duplicates), (COUNT as usize, 0));
    assert!(
        stderr.contains("out of range") || stderr.contains("offset reset"),
        "the reset is not logged: {stderr}"
    );
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_offset_out_of_range_follows_offset_reset() {
    offset_out_of_range(Kafka::V4, "rdkafka");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_offset_out_of_range_follows_offset_reset() {
    offset_out_of_range(Kafka::V3, "kafka");
}

/// A broker that stays away longer than `--kafka-retry-timeout`: fila
/// exits 1 soon after, naming the broker and saying it gave up.
fn gives_up_after_the_retry_timeout(version: Kafka, client: &str) {
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    produce_messages(brokers, &input, 10, LIGHT);
    let mut args = run_args(&input, &output, &group);
    args.extend(["--kafka-client", client, "--kafka-retry-timeout", "3s"]);
    if client == "kafka" {
        args.extend(["--replica", "0/1"]);
    }
    let mut fila = Fila::start(brokers, &args);
    wait_for_outputs(brokers, &output, 10);
    let stopped = Stopped::stop(brokers);
    let status = fila.wait(Duration::from_secs(60));
    let stderr = fila.stderr();
    stopped.start();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave up after 3s"), "{stderr}");
    assert!(stderr.contains(brokers), "{stderr}");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn rdkafka_gives_up_after_the_retry_timeout() {
    gives_up_after_the_retry_timeout(Kafka::V4, "rdkafka");
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn kafka_client_gives_up_after_the_retry_timeout() {
    gives_up_after_the_retry_timeout(Kafka::V3, "kafka");
}

/// Keyed records `ids`, record `i` being `record(i)` (its key and value),
/// produced at a steady pace over `over` by a thread of its own, so that
/// crashes fall while records still arrive. The thread yields them.
fn trickle_keyed(
    brokers: &str,
    topic: &str,
    ids: std::ops::Range<u64>,
    over: Duration,
    record: impl Fn(u64) -> (String, Vec<u8>) + Send + 'static,
) -> std::thread::JoinHandle<Vec<(String, Vec<u8>)>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    std::thread::spawn(move || {
        let mut writer =
            fila_connectors::TopicWriter::connect(ClientKind::Rdkafka, &brokers, &[&topic])
                .unwrap();
        let records: Vec<(String, Vec<u8>)> = ids.map(record).collect();
        let step = Duration::from_millis(50);
        let steps = (over.as_secs_f64() / step.as_secs_f64()).ceil().max(1.0) as usize;
        let per_step = records.len().div_ceil(steps);
        let started = Instant::now();
        for (i, chunk) in records.chunks(per_step).enumerate() {
            let batch: Vec<fila_connectors::KeyedRecord<'_>> = chunk
                .iter()
                .map(|(k, v)| (topic.as_str(), Some(k.as_bytes()), v.as_slice()))
                .collect();
            writer.send_keyed(&batch).unwrap();
            let due = started + step * (i as u32 + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        records
    })
}

/// Record `i` of `key_totals`'s input: keys `k0` to `k{keys - 1}` in
/// turn, amounts cycling through -3..=6.
fn amount(i: u64, keys: u64) -> (String, Vec<u8>) {
    let amount = (i % 10) as i64 - 3;
    (format!("k{}", i % keys), amount.to_string().into_bytes())
}

/// `kill -9` of a job with durable keyed state (the `key_totals` example,
/// whose stage keeps its state per input partition and writes it to a
/// changelog) at random points of a keyed stream on six partitions, under
/// exactly-once, with a restart after each: each restart restores every
/// partition's totals from the changelog. A reader of committed records
/// then sees, for every key, the counts 1, 2, ..., n exactly once each, n
/// being the key's records in the input, and the last total equal to the
/// plain sum of its amounts. A lost restore would start a key's count at
/// 1 again; an update applied twice would skip a count.
fn durable_state_survives_crashes(version: Kafka) {
    const CRASHES: usize = 5;
    const KEYS: u64 = 60;
    const RECORDS: u64 = 20_000;
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let producer = trickle_keyed(brokers, &input, 0..RECORDS, Duration::from_secs(20), |i| {
        amount(i, KEYS)
    });
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--replica",
        "0/1",
        "--workers",
        "2",
        "--exactly-once",
    ];
    let (seed, points) = crash_loop(
        brokers,
        &output,
        CRASHES,
        200..=1_200,
        RECORDS as usize,
        || Fila::start_example("key_totals", brokers, &args),
    );
    let records = producer.join().expect("the producer does not panic");
    // On a slow machine the last kills may come after the whole stream
    // has been read: each restart still restores every partition, which
    // is what this test checks, and the log says where the kills fell.
    let last = Fila::start_example("key_totals", brokers, &args);
    let out = read_all(brokers, &output, RECORDS as usize, Duration::from_secs(120));
    let log = last.stderr();
    last.stop();
    let keys = check_key_totals(&out, &records, &format!("crashes at {points:?}"));
    eprintln!(
        "{CRASHES} crashes (seed {seed}) after {points:?} outputs: {} outputs of {keys} keys, \
         every count 1..n once, every total exact; the last run restored {} partition(s) from a changelog not empty",
        out.len(),
        log.matches("state restored from its changelog").count()
    );
}

/// Checks `key_totals`'s outputs `out` against its input `records`: for
/// every key, the counts 1, 2, ..., n each exactly once (n its records),
/// and the total at n the plain sum of its amounts. Returns the keys.
fn check_key_totals(out: &[Fetched], records: &[(String, Vec<u8>)], context: &str) -> usize {
    let mut counts: HashMap<String, Vec<u64>> = HashMap::new();
    let mut last: HashMap<String, (u64, i64)> = HashMap::new();
    for record in out {
        let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        let (count, total) = (v["count"].as_u64().unwrap(), v["total"].as_i64().unwrap());
        counts.entry(key.clone()).or_default().push(count);
        let at = last.entry(key).or_default();
        if count > at.0 {
            *at = (count, total);
        }
    }
    let mut expected: HashMap<String, (u64, i64)> = HashMap::new();
    for (key, amount) in records {
        let e = expected.entry(key.clone()).or_default();
        e.0 += 1;
        e.1 += std::str::from_utf8(amount).unwrap().parse::<i64>().unwrap();
    }
    for (key, (n, sum)) in &expected {
        let mut seen = counts.remove(key).unwrap_or_default();
        seen.sort_unstable();
        let want: Vec<u64> = (1..=*n).collect();
        assert!(
            seen == want,
            "key {key}: counts {:?}... ({} of them) where 1..={n} each once was due, after \
             {context}",
            &seen[..seen.len().min(20)],
            seen.len()
        );
        assert_eq!(last[key], (*n, *sum), "key {key}'s last total");
    }
    assert!(
        counts.is_empty(),
        "keys never produced: {:?}",
        counts.keys()
    );
    assert_eq!(out.len(), records.len(), "outputs, one per record");
    expected.len()
}

/// The flags of an exactly-once member of group `group` with one worker,
/// so that several share the machine's cores.
fn member_args<'a>(input: &'a str, output: &'a str, group: &'a str) -> [&'a str; 9] {
    [
        "--input-topic",
        input,
        "--output-topic",
        output,
        "--group",
        group,
        "--workers",
        "1",
        "--exactly-once",
    ]
}

/// `n` members started with `start`, each waited for until it has
/// partitions.
fn start_members(n: usize, start: impl Fn() -> Fila) -> Vec<Fila> {
    let mut members: Vec<Fila> = (0..n).map(|_| start()).collect();
    for m in &mut members {
        m.wait_assigned();
    }
    members
}

/// Durable keyed state across a group's rebalances, under exactly-once:
/// three `key_totals` members of one group on six partitions, one killed
/// mid-stream (its partitions move, and their new owners restore their
/// state from the changelog) and one joining after (partitions move
/// again). Every key's counts are still 1..n once each, and its totals
/// exact: each partition's state followed it.
fn durable_state_follows_partitions_across_members(version: Kafka) {
    const KEYS: u64 = 60;
    const RECORDS: u64 = 12_000;
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let args = member_args(&input, &output, &group);
    let member = || Fila::start_example("key_totals", brokers, &args);
    let mut members = start_members(3, member);
    let producer = trickle_keyed(brokers, &input, 0..RECORDS, Duration::from_secs(18), |i| {
        amount(i, KEYS)
    });
    wait_for_outputs(brokers, &output, RECORDS as usize / 5);
    members.remove(0).crash();
    let at_crash = count(brokers, &output);
    wait_for_outputs(brokers, &output, at_crash + RECORDS as usize / 10);
    let mut newcomer = member();
    newcomer.wait_assigned();
    members.push(newcomer);
    let records = producer.join().expect("the producer does not panic");
    let out = read_all(brokers, &output, RECORDS as usize, Duration::from_secs(120));
    let logs: Vec<String> = members
        .into_iter()
        .map(|m| m.stop_with_stderr().1)
        .collect();
    let restores: usize = logs
        .iter()
        .map(|log| log.matches("state restored from its changelog").count())
        .sum();
    let dropped: usize = logs
        .iter()
        .map(|log| log.matches("state dropped: the partition moved").count())
        .sum();
    let keys = check_key_totals(&out, &records, &format!("a kill at {at_crash} outputs"));
    eprintln!(
        "{version:?}: 3 members, 6 partitions, {RECORDS} records: killed one after {at_crash} \
         outputs, one joined; {keys} keys, every count 1..n once, every total exact; the \
         members left restored {restores} partition(s) from a changelog not empty, and \
         dropped the state of {dropped} that moved away"
    );
    // Whether the newcomer's partitions came from a member still running
    // (which then drops their state) or were the killed member's depends
    // on when its session ran out: the count is reported, not judged
    // (`forget_drops_one_partitions_state_and_keeps_the_others` tests
    // the dropping itself).
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn durable_keyed_state_follows_partitions_across_kip848_members() {
    durable_state_follows_partitions_across_members(Kafka::V4);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn durable_keyed_state_follows_partitions_across_classic_members() {
    durable_state_follows_partitions_across_members(Kafka::V3);
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn durable_keyed_state_on_kafka_4_survives_crashes_exactly_once() {
    durable_state_survives_crashes(Kafka::V4);
}

/// The crashes of [`durable_state_survives_crashes`] under at-least-once,
/// with the replay bound U at 500 records: no update is lost (every key
/// reaches its count n), and the counts end above the true ones by at
/// most what the crashes replay, U records each (docs/design/state.md).
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn durable_keyed_state_at_least_once_loses_nothing_and_overcounts_within_the_replay_bound() {
    const CRASHES: usize = 3;
    const KEYS: u64 = 60;
    const RECORDS: u64 = 10_000;
    const U: u64 = 500;
    let held = hold(Kafka::V4);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let producer = trickle_keyed(brokers, &input, 0..RECORDS, Duration::from_secs(10), |i| {
        amount(i, KEYS)
    });
    let bound = U.to_string();
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--replica",
        "0/1",
        "--workers",
        "2",
        "--max-uncommitted",
        &bound,
    ];
    let (seed, points) = crash_loop(
        brokers,
        &output,
        CRASHES,
        200..=1_200,
        RECORDS as usize,
        || Fila::start_example("key_totals", brokers, &args),
    );
    let records = producer.join().expect("the producer does not panic");
    let mut due: HashMap<String, u64> = HashMap::new();
    for (key, _) in &records {
        *due.entry(key.clone()).or_default() += 1;
    }
    let last = Fila::start_example("key_totals", brokers, &args);
    // Duplicates make up the output's length before the last keys are
    // done: read until every key has reached its count.
    let deadline = Instant::now() + Duration::from_secs(120);
    let highest = loop {
        let out = read_all(brokers, &output, RECORDS as usize, Duration::from_secs(5));
        let mut highest: HashMap<String, u64> = HashMap::new();
        for record in &out {
            let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            let count = v["count"].as_u64().unwrap();
            let at = highest
                .entry(v["key"].as_str().unwrap().to_owned())
                .or_default();
            *at = (*at).max(count);
        }
        let short: Vec<(&String, u64, u64)> = due
            .iter()
            .map(|(k, &n)| (k, highest.get(k).copied().unwrap_or(0), n))
            .filter(|&(_, got, n)| got < n)
            .collect();
        if short.is_empty() {
            break highest;
        }
        assert!(
            Instant::now() < deadline,
            "keys short of their counts (key, highest, due) after crashes at {points:?}: \
             {short:?}: {}",
            last.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    last.stop();
    let over: u64 = due.iter().map(|(k, &n)| highest[k] - n).sum();
    let keys_over = due.iter().filter(|(k, &n)| highest[*k] > n).count();
    eprintln!(
        "{CRASHES} crashes (seed {seed}) after {points:?} outputs, at-least-once, U = {U}: \
         every key reached its count; counts {over} above the true ones in all ({keys_over} \
         of {KEYS} keys), within the bound of {}",
        CRASHES as u64 * U
    );
    assert!(
        over <= CRASHES as u64 * U,
        "state counted {over} updates twice after {CRASHES} crashes, past {CRASHES} x U = {}",
        CRASHES as u64 * U
    );
}

/// `kill -9` of the `window_sums` example, whose windows are durable, at
/// random points of a keyed stream of readings on six partitions, under
/// exactly-once, with a restart after each: every window's sum is exact
/// and emitted once. Readings go 2 ms of event time apart, so 1 s windows
/// close all along the stream; at its end, readings of other keys far
/// ahead in event time close every window of every partition. A restore
/// that lost an open window would emit a short sum; one that forgot a
/// closed window, or the watermark, would emit a window twice or drop
/// records as late.
fn durable_windows_survive_crashes(version: Kafka) {
    const CRASHES: usize = 4;
    const KEYS: u64 = 30;
    const RECORDS: u64 = 20_000;
    const STEP_MS: u64 = 2;
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let reading = |key: &str, value: u64, time: u64| {
        let json = serde_json::json!({ "key": key, "value": value, "time": time });
        (key.to_owned(), json.to_string().into_bytes())
    };
    let producer = trickle_keyed(
        brokers,
        &input,
        0..RECORDS,
        Duration::from_secs(20),
        move |i| reading(&format!("k{}", i % KEYS), i % 7, i * STEP_MS),
    );
    let args = [
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group",
        &group,
        "--replica",
        "0/1",
        "--workers",
        "2",
        "--exactly-once",
    ];
    let (seed, points) = crash_loop(brokers, &output, CRASHES, 40..=120, usize::MAX, || {
        Fila::start_example("window_sums", brokers, &args)
    });
    let records = producer.join().expect("the producer does not panic");
    let last = Fila::start_example("window_sums", brokers, &args);
    // Far ahead in event time, on keys that cover every partition.
    let end = (RECORDS * STEP_MS + 10_000).to_string();
    let closing: Vec<(String, Vec<u8>)> = (0..100)
        .map(|j| reading(&format!("end{j}"), 0, end.parse().unwrap()))
        .collect();
    let mut writer =
        fila_connectors::TopicWriter::connect(ClientKind::Rdkafka, brokers, &[&input]).unwrap();
    let batch: Vec<fila_connectors::KeyedRecord<'_>> = closing
        .iter()
        .map(|(k, v)| (input.as_str(), Some(k.as_bytes()), v.as_slice()))
        .collect();
    writer.send_keyed(&batch).unwrap();
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (key, value) in &records {
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let start = v["time"].as_i64().unwrap().div_euclid(1000) * 1000;
        *expected.entry((key.clone(), start)).or_default() += v["value"].as_i64().unwrap();
    }
    let out = read_all(brokers, &output, expected.len(), Duration::from_secs(120));
    let log = last.stderr();
    last.stop();
    let mut seen: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for record in &out {
        let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        seen.entry((key, v["start"].as_i64().unwrap()))
            .or_default()
            .push(v["sum"].as_i64().unwrap());
    }
    for (window, sum) in &expected {
        assert_eq!(
            seen.remove(window),
            Some(vec![*sum]),
            "window {window:?}: its sum, once, after crashes at {points:?}"
        );
    }
    assert!(
        seen.is_empty(),
        "windows emitted that had no records: {:?}",
        seen.keys().take(10).collect::<Vec<_>>()
    );
    eprintln!(
        "{CRASHES} crashes (seed {seed}) after {points:?} outputs: {} windows of {KEYS} keys, \
         each emitted once with its exact sum; the last run restored {} partition(s) from a \
         changelog not empty",
        expected.len(),
        log.matches("state restored from its changelog").count()
    );
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn durable_windows_on_kafka_3_survive_crashes_exactly_once() {
    durable_windows_survive_crashes(Kafka::V3);
}

/// Line `i` of the wordcount tests' input: one to eight words of a
/// vocabulary of 40, in mixed case, as `{"text": ...}`.
fn line(i: u64) -> String {
    let mut state = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let words: Vec<String> = (0..1 + next(8))
        .map(|_| match next(40) {
            w if w % 5 == 0 => format!("Word{w}"),
            w => format!("word{w}"),
        })
        .collect();
    serde_json::json!({ "text": words.join(" ") }).to_string()
}

/// The wordcount example as members of one group, on a six-partition
/// topic of lines not keyed by word, under exactly-once: the words are
/// re-keyed through a repartition topic, so each word is counted by one
/// member, in one partition's state, durable in its changelog. One member
/// is killed (`kill -9`) and restarted `kills_due` times mid-stream, and a
/// fourth member joins after. Every word's counts are then 1, 2, ..., n once each
/// and n is its plain count in the input: no word counted by two members,
/// no count lost to a crash or a move, none applied twice.
///
/// `combined`: the members run with `--latest-per-key`, under which the
/// example counts with `reduce_combined`: a batch's words cross the
/// repartition topic as one record per word. Each word's counts then rise
/// with no count twice and end at its plain count, and the repartition
/// topic's committed records of a word add up to that count.
///
/// FILA_TEST_WORDCOUNT_LINES (20,000) changes its size.
fn wordcount_scales_out(version: Kafka, kills_due: usize, combined: bool) {
    let lines: u64 = std::env::var("FILA_TEST_WORDCOUNT_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let held = hold(version);
    let brokers = held.brokers.as_str();
    let (input, output, group) = (unique("lines"), unique("counts"), unique("group"));
    create_topic(brokers, &input, 6).unwrap();
    let mut args = member_args(&input, &output, &group).to_vec();
    if combined {
        args.push("--latest-per-key");
    }
    let member = || Fila::start_example("wordcount", brokers, &args);
    let mut members = start_members(3, member);
    // The repartition topic, read as it is written: the members delete
    // its records once committed.
    let repartition = format!("{group}-count-repartition");
    let tail = Tail::start(brokers, &repartition);
    // Unkeyed: spread over the partitions in turn, as any producer would.
    // About 400 chunks over 20 s; how many have been sent.
    let chunk = (lines as usize / 400).max(1);
    let chunks = (lines as usize).div_ceil(chunk);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = std::thread::spawn({
        let (brokers, input, sent) = (brokers.to_owned(), input.clone(), sent.clone());
        move || {
            let all: Vec<Vec<u8>> = (0..lines).map(|i| line(i).into_bytes()).collect();
            let mut writer =
                fila_connectors::TopicWriter::connect(ClientKind::Rdkafka, &brokers, &[&input])
                    .unwrap();
            let started = Instant::now();
            let step = Duration::from_millis(50);
            for (i, values) in all.chunks(chunk).enumerate() {
                let records: Vec<(&str, &[u8])> = values
                    .iter()
                    .map(|v| (input.as_str(), v.as_slice()))
                    .collect();
                writer.send_all(&records).unwrap();
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let due = started + step * (i as u32 + 1);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
    });
    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..lines {
        let v: serde_json::Value = serde_json::from_str(&line(i)).unwrap();
        for w in v["text"].as_str().unwrap().split(' ') {
            *expected.entry(w.to_lowercase()).or_default() += 1;
        }
    }
    let words: u64 = expected.values().sum();
    let mut kills = Vec::new();
    for k in 0..kills_due {
        if combined {
            // Few outputs: the kills follow the input instead, over its
            // first three quarters.
            let due = chunks * 3 * (k + 1) / (4 * kills_due);
            let deadline = Instant::now() + Duration::from_secs(120);
            while sent.load(std::sync::atomic::Ordering::Relaxed) < due {
                assert!(
                    Instant::now() < deadline,
                    "the producer stalled below {due} chunks"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            wait_for_outputs(brokers, &output, (words as usize / 12) * (k + 1));
        }
        members.remove(0).crash();
        kills.push(count(brokers, &output));
        members.push(member());
    }
    // The newcomer serves its metrics: both of its sources are on them.
    let with_metrics: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--metrics-addr", "127.0.0.1:0"])
        .collect();
    let mut joining = Fila::start_example("wordcount", brokers, &with_metrics);
    joining.wait_assigned();
    let metrics = joining.metrics_addr();
    members.push(joining);
    producer.join().expect("the producer does not panic");
    let out = if combined {
        read_final_counts(brokers, &output, &expected)
    } else {
        read_all(brokers, &output, words as usize, Duration::from_secs(180))
    };
    // Lag comes from the client's statistics each second, and a partition
    // revoked leaves the page until it is assigned again: a member killed
    // moves partitions for a while after, so the page gets some time.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = scrape(&metrics);
        let missing: Vec<&String> = [&input, &repartition]
            .into_iter()
            .filter(|topic| {
                !page.contains(&format!("fila_consumer_lag_records{{topic=\"{topic}\""))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lag of {missing:?} on the metrics page:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: Vec<String> = members
        .into_iter()
        .map(|m| m.stop_with_stderr().1)
        .collect();
    let words_in = tail.stop();
    // What the repartition topic still keeps: its committed records are
    // deleted, every 30 s and when a member stops. Transaction markers
    // after a partition's last record stay (no reader commits past them),
    // so the offsets kept are counted, and the records read.
    let starts = TopicReader::start_offsets(ClientKind::Rdkafka, brokers, &repartition).unwrap();
    let ends = TopicReader::end_offsets(ClientKind::Rdkafka, brokers, &repartition).unwrap();
    let kept: BTreeMap<i32, i64> = ends
        .iter()
        .map(|(&p, &end)| (p, end - starts[&p]))
        .collect();
    let records_kept = read_to_end(brokers, &repartition, starts.clone());
    if combined {
        // Read again now that every member has stopped: a count applied
        // twice would show after the final counts were first seen.
        let all = read_all(brokers, &output, out.len(), Duration::from_secs(60));
        check_combined_counts(&all, &expected, &words_in, &logs);
    } else {
        check_every_count(&out, &expected, &words_in, &logs, &kills);
    }
    // A member killed after a commit and before its delete leaves that
    // partition's records to a later delete, which comes only with a later
    // commit of that partition: so this holds without kills.
    if kills_due == 0 {
        assert!(
            records_kept.is_empty() && starts.values().all(|&start| start > 0),
            "{} committed records left in the repartition topic (start offsets {starts:?}, \
             offsets kept {kept:?})",
            records_kept.len()
        );
    }
    eprintln!(
        "{version:?}: wordcount, 3 members then 4, 6 partitions, {lines} lines, {words} words of \
         {} kinds{}: killed and restarted one {kills_due} times after {kills:?} outputs; {}, \
         every last count the plain count; the repartition topic held {} records and \
         keeps {} records, offsets {kept:?} per partition",
        expected.len(),
        if combined { ", combined" } else { "" },
        if combined {
            "every word's counts rising, none twice"
        } else {
            "every count 1..n once"
        },
        words_in.len(),
        records_kept.len()
    );
}

/// Reads a topic from its start as it is written, on a thread of its own,
/// until stopped.
struct Tail {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Fetched>>,
}

impl Tail {
    fn start(brokers: &str, topic: &str) -> Tail {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let start: BTreeMap<i32, i64> =
            TopicReader::end_offsets(ClientKind::Rdkafka, brokers, topic)
                .unwrap()
                .into_keys()
                .map(|p| (p, 0))
                .collect();
        let mut reader = TopicReader::new(ClientKind::Rdkafka, brokers, topic, start).unwrap();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut all = Vec::new();
                // Until stopped, and then until a fetch brings nothing.
                loop {
                    let batch = reader.fetch().unwrap();
                    let empty = batch.is_empty();
                    all.extend(batch);
                    if empty && stop.load(Ordering::Relaxed) {
                        return all;
                    }
                }
            }
        });
        Tail { stop, thread }
    }

    fn stop(self) -> Vec<Fetched> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the reader does not panic")
    }
}

#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn wordcount_members_count_each_word_once_through_a_join() {
    wordcount_scales_out(Kafka::V4, 0, false);
}

/// Failed twice in its first 80 or so runs: some words were counted more
/// than once (their counts went past n, none repeated) after the kills.
/// The second time, the repartition topic held the extra words: the first
/// segment read lines again after their commit (docs/design/state.md, "A
/// defect, its likely cause, and the check against it"). A failure says
/// which segment counted the extra words.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn wordcount_members_count_each_word_once_through_kills_and_a_join() {
    wordcount_scales_out(Kafka::V4, 5, false);
}

/// The same, the words combined before the repartition
/// (`reduce_combined`), with three kills and a join.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn wordcount_combined_members_count_each_word_exactly_through_kills_and_a_join() {
    wordcount_scales_out(Kafka::V4, 3, true);
}

/// Writing every count, under exactly-once: each word's counts are 1..n
/// once each, n its plain count, and the repartition topic held at least
/// every word; a failure names where extra counts came from.
fn check_every_count(
    out: &[Fetched],
    expected: &HashMap<String, u64>,
    words_in: &[Fetched],
    logs: &[String],
    kills: &[usize],
) {
    let words: u64 = expected.values().sum();
    let mut emitted = counts_by_word(out);
    for (word, n) in expected {
        let mut counts = emitted.remove(word).unwrap_or_default();
        counts.sort_unstable();
        if !counts.iter().copied().eq(1..=*n) {
            for (i, log) in logs.iter().enumerate() {
                eprintln!("member {i}:\n{log}");
            }
            let twice: Vec<u64> = counts
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            let above: Vec<u64> = counts.iter().copied().filter(|c| c > n).collect();
            // Which segment counted twice: the words the repartition
            // topic held (committed), against the input's.
            let this_word = serde_json::to_vec(word).unwrap();
            let of_word = words_in
                .iter()
                .filter(|r| r.key.as_deref() == Some(this_word.as_slice()))
                .count();
            // The words not checked yet whose counts are off, with how
            // many counts each has and its due.
            let mut off: Vec<(&String, usize, u64)> = expected
                .iter()
                .filter_map(|(w, &due)| Some((w, emitted.get(w)?.len(), due)))
                .filter(|&(_, got, due)| got as u64 != due)
                .collect();
            off.sort();
            eprintln!("other words off (word, counts, due): {off:?}");
            panic!(
                "{word}: {} counts where 1..={n} each once was due, after kills at {kills:?} \
                 outputs; {} twice (the first {:?}), {} above {n}, the highest {:?}; the \
                 repartition topic held {} words ({words} due), {of_word} of them {word}",
                counts.len(),
                twice.len(),
                &twice[..twice.len().min(10)],
                above.len(),
                counts.last(),
                words_in.len(),
            );
        }
    }
    assert!(
        emitted.is_empty(),
        "words not in the input: {:?}",
        emitted.keys()
    );
    assert!(
        words_in.len() as u64 >= words,
        "the repartition topic held {} words, {words} due",
        words_in.len()
    );
}

/// The output of the wordcount example once every word's highest count
/// has reached its plain count (or after three minutes: the checks then
/// say what is missing).
fn read_final_counts(brokers: &str, output: &str, expected: &HashMap<String, u64>) -> Vec<Fetched> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = read_all(brokers, output, 1, Duration::from_secs(5));
        let mut highest: HashMap<String, u64> = HashMap::new();
        for record in &out {
            let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            let top = highest
                .entry(v["word"].as_str().unwrap().to_owned())
                .or_default();
            *top = (*top).max(v["count"].as_u64().unwrap());
        }
        let reached = expected.iter().all(|(w, n)| highest.get(w) >= Some(n));
        if reached || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The counts the wordcount example wrote for each word (`{"word", "count"}`
/// records), in the order given.
fn counts_by_word<'a>(out: impl IntoIterator<Item = &'a Fetched>) -> HashMap<String, Vec<u64>> {
    let mut emitted: HashMap<String, Vec<u64>> = HashMap::new();
    for record in out {
        let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        emitted
            .entry(v["word"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["count"].as_u64().unwrap());
    }
    emitted
}

/// Under `reduce_combined` and exactly-once: each word's counts, in the
/// order of its output partition, rise with none written twice and end at
/// its plain count; the repartition topic's committed records of a word,
/// `[word, k]`, add up to that count; and fewer records crossed it than
/// there are words (the combining happened).
fn check_combined_counts(
    out: &[Fetched],
    expected: &HashMap<String, u64>,
    words_in: &[Fetched],
    logs: &[String],
) {
    let fail = |what: String| -> ! {
        for (i, log) in logs.iter().enumerate() {
            eprintln!("member {i}:\n{log}");
        }
        panic!("{what}");
    };
    let mut ordered: Vec<&Fetched> = out.iter().collect();
    ordered.sort_by_key(|r| (r.position.partition, r.position.offset));
    let mut emitted = counts_by_word(ordered);
    let mut crossed: HashMap<String, u64> = HashMap::new();
    for record in words_in {
        let (word, k): (String, u64) = serde_json::from_slice(&record.payload).unwrap();
        *crossed.entry(word).or_default() += k;
    }
    for (word, &n) in expected {
        let counts = emitted.remove(word).unwrap_or_default();
        if !counts.windows(2).all(|w| w[0] < w[1]) || counts.last() != Some(&n) {
            fail(format!(
                "{word}: counts {counts:?} do not rise to {n} once each (the first 50: {:?})",
                &counts[..counts.len().min(50)]
            ));
        }
        if crossed.get(word) != Some(&n) {
            fail(format!(
                "{word}: the repartition topic's committed records add up to {:?}, {n} due",
                crossed.get(word)
            ));
        }
    }
    assert!(
        emitted.is_empty(),
        "words not in the input: {:?}",
        emitted.keys()
    );
    let words: u64 = expected.values().sum();
    assert!(
        (words_in.len() as u64) < words,
        "{} records crossed the repartition topic for {words} words: nothing was combined",
        words_in.len()
    );
}
