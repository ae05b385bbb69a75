//! The driver with a job whose stage panics or rejects: the run goes on,
//! every record is accounted for, and every position is acknowledged; and
//! how the driver commits.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fila_connectors::{ReplayBound, Uncommitted};
use fila_pipeline::counters::Counters;
use fila_pipeline::dataflow::{Job, Rejected};
use fila_pipeline::driver::Driver;
use fila_runtime::{Runtime, Workers};
use support::{numbered, record, Collect, CommitLog, Records, TxnSink};

fn runtime(window: usize) -> Runtime {
    Runtime::builder()
        .workers(Workers::Count(2.try_into().unwrap()))
        .pin(false)
        .window(window)
        .build()
        .unwrap()
}

fn echo() -> Arc<Job> {
    Arc::new(
        Job::new("echo")
            .decode(|input| Ok(input.payload().to_vec()))
            .sink(|b: &Vec<u8>| b.clone()),
    )
}

#[test]
fn panicking_and_rejecting_stages_dead_letter_their_record_and_the_run_goes_on() {
    std::panic::set_hook(Box::new(|_| {}));
    let job = Job::new("test")
        .decode(|input| {
            std::str::from_utf8(input.payload())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Rejected("not a number".into()))
        })
        .map("double", |n: u64| Ok(n * 2))
        .map("picky", |n: u64| {
            if n % 14 == 0 {
                panic!("stage bug on {n}");
            }
            if n % 10 == 0 {
                return Err(Rejected(format!("{n} ends in zero")));
            }
            Ok(n + 1)
        })
        .sink(|n: &u64| n.to_string().into_bytes());
    let rt = runtime(3);
    let sink = Collect::default();
    let input = (0..100)
        .map(|i| match i {
            50 => record(0, i, "x"),
            i => record(0, i, &i.to_string()),
        })
        .collect();
    let (mut source, acks, commits) = Records::committing(input, 0);
    let counters = Counters::default();
    let summary = Driver::new()
        .counters(&counters)
        .run(&rt, Arc::new(job), &mut source, Box::new(sink.clone()))
        .unwrap();

    let dead = sink.dead.lock().unwrap().clone();
    let panicked: Vec<_> = dead.iter().filter(|d| d.2.contains("panicked")).collect();
    let rejected: Vec<_> = dead
        .iter()
        .filter(|d| d.2.contains("ends in zero"))
        .collect();
    // Record i reaches "picky" as 2i: it panics when 2i is a multiple of 14,
    // else is rejected when 2i is a multiple of 10. Record 50 is not a number.
    let panics_expected: Vec<u64> = (0..100).filter(|i| *i != 50 && (2 * i) % 14 == 0).collect();
    let rejects_expected: Vec<u64> = (0..100)
        .filter(|i| *i != 50 && (2 * i) % 14 != 0 && (2 * i) % 10 == 0)
        .collect();
    assert_eq!(panicked.len(), panics_expected.len());
    assert_eq!(rejected.len(), rejects_expected.len());
    assert!(panicked.iter().all(|d| d.2.contains("stage bug on")));
    assert!(dead
        .iter()
        .any(|d| d.1 == "x" && d.2.contains("not a number")));
    // The dead letter carries the original payload.
    assert!(panicked.iter().all(|d| d.1 == d.0.offset.to_string()));

    let outputs = sink.outputs.lock().unwrap().len() as u64;
    assert_eq!(outputs + dead.len() as u64, 100);
    assert_eq!(
        (summary.messages, summary.outputs, summary.dead_letters),
        (100, outputs, dead.len() as u64)
    );
    assert_eq!(summary.panicked, panics_expected.len() as u64);
    assert_eq!(counters.messages.load(Ordering::Relaxed), 100);
    // The live latency histogram counts every output, and only outputs.
    let page = fila_pipeline::metrics::render(&rt.stats(), &counters);
    let count = format!("fila_record_latency_seconds_count {outputs}");
    assert!(page.lines().any(|l| l == count), "no {count:?} in\n{page}");
    assert_eq!(summary.latencies_us.len(), outputs);
    assert_eq!(acks.outstanding(), 0, "every position is acknowledged");
    assert_eq!(commits.lock().unwrap().last(), Some(&vec![(0, 100)]));
    assert_eq!(rt.shutdown().failed, panics_expected.len() as u64);
}

/// With the replay bound full, no record is acknowledged, so only a retry
/// of the refused commit can let the source read on. Without one, this
/// run never ends (the test then fails on its time bound).
#[test]
fn a_refused_commit_is_offered_again_and_the_run_goes_on() {
    let rt = runtime(4);
    let (mut source, acks, commits) = Records::committing(numbered(40), 3);
    let driver = Driver::new()
        .max_uncommitted(ReplayBound {
            records: 4,
            bytes: u64::MAX,
        })
        .commit_interval(Duration::from_millis(10));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let summary = driver.run(&rt, echo(), &mut source, Box::new(Collect::default()));
            let _ = done_tx.send(summary.map(|s| s.outputs));
        });
        let outcome = done_rx.recv_timeout(Duration::from_secs(60));
        if outcome.is_err() {
            // Unblock the driver so the test fails instead of hanging.
            rt.close();
        }
        let outputs = outcome
            .expect("the run stalled behind a refused commit")
            .unwrap();
        assert_eq!(outputs, 40);
    });
    let commits = commits.lock().unwrap();
    assert_eq!(commits.last().unwrap(), &vec![(0, 40)], "{commits:?}");
    assert_eq!(acks.uncommitted(), Uncommitted::default());
    rt.shutdown();
}

/// Runs `n` records of a committing source through an echo job with
/// `driver`, and returns the commits that landed.
fn run_committing(n: u64, driver: Driver<'_>) -> Vec<Vec<(i32, i64)>> {
    let rt = runtime(32);
    let (mut source, acks, commits): (_, _, CommitLog) = Records::committing(numbered(n), 0);
    let summary = driver
        .run(&rt, echo(), &mut source, Box::new(Collect::default()))
        .unwrap();
    assert_eq!(summary.outputs, n);
    assert_eq!(acks.uncommitted(), Uncommitted::default());
    rt.shutdown();
    let commits = commits.lock().unwrap().clone();
    assert_eq!(commits.last(), Some(&vec![(0, n as i64)]), "{commits:?}");
    commits
}

/// Commits go by time, not by a count of records: with an interval longer
/// than the run and a bound the run never nears, the only commit is the
/// last one, at the end.
#[test]
fn commits_go_by_time_so_a_job_that_keeps_up_never_waits_for_one() {
    let driver = Driver::new().commit_interval(Duration::from_secs(3600));
    assert_eq!(run_committing(20_000, driver).len(), 1);
}

/// Near the replay bound the commit thread commits at once instead of
/// waiting out the interval, so a small bound paces reading by commits
/// (without it this run would wait an hour for its first commit).
#[test]
fn a_source_at_half_the_replay_bound_gets_a_commit_at_once() {
    let driver = Driver::new()
        .commit_interval(Duration::from_secs(3600))
        .max_uncommitted(ReplayBound {
            records: 100,
            bytes: u64::MAX,
        });
    let commits = run_committing(2_000, driver);
    // At most 100 uncommitted at a time: at least 20 commits.
    assert!(commits.len() >= 20, "{} commits", commits.len());
    let mut last = 0;
    for c in &commits {
        let (_, offset) = c[0];
        assert!(offset > last && offset - last <= 100, "{commits:?}");
        last = offset;
    }
}

/// A source that does not commit is not tracked at all: nothing to
/// acknowledge, and the run still accounts for every record.
#[test]
fn a_source_that_does_not_commit_runs_untracked() {
    let rt = runtime(8);
    let mut source = Records::new(numbered(500));
    let sink = Collect::default();
    let summary = Driver::new()
        .run(&rt, echo(), &mut source, Box::new(sink.clone()))
        .unwrap();
    assert_eq!(summary.outputs, 500);
    assert_eq!(sink.outputs.lock().unwrap().len(), 500);
    rt.shutdown();
}

/// Asks `sink` for an abort, as a rebalance does, up to 40 times at
/// moments that vary from run to run, until `done` is set.
fn ask_aborts_at_random(sink: TxnSink, done: &std::sync::atomic::AtomicBool) {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for _ in 0..40 {
        if done.load(Ordering::SeqCst) {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(500 + seed % 5_000));
        sink.request_abort();
    }
}

/// Exactly-once through the driver with transactions that fail: every
/// third commit is refused, and aborts are asked for at random moments as
/// rebalances do. Whatever the interleaving, the committed transactions
/// hold every record's result exactly once (and every bad record's dead
/// letter, including a panic's), and the offsets committed reach the end.
#[test]
fn aborted_transactions_rewind_and_every_record_is_committed_once() {
    std::panic::set_hook(Box::new(|_| {}));
    const N: i64 = 5_000;
    let rt = runtime(32);
    let input: Vec<_> = (0..N)
        .map(|i| match i % 997 {
            13 => record(0, i, "x"),
            _ => record(0, i, &i.to_string()),
        })
        .collect();
    let (mut source, acks) = Records::rewindable(input);
    let sink = TxnSink::failing_every(3);
    let job = Job::new("echo")
        .decode(|input| {
            std::str::from_utf8(input.payload())
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| Rejected("not a number".into()))
        })
        .map("picky", |n: i64| {
            if n % 1009 == 7 {
                panic!("stage bug on {n}");
            }
            Ok(n)
        })
        .sink(|n: &i64| n.to_string().into_bytes());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let asker = sink.clone();
        s.spawn(|| ask_aborts_at_random(asker, &stop));
        // A small replay bound: an abort while it is full must still be
        // followed by the rewind that lets commits go on. Were it not, the
        // run would stall: it fails on its time bound instead.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (rt, sink) = (&rt, sink.clone());
        s.spawn(move || {
            let summary = Driver::new()
                .commit_interval(Duration::from_millis(2))
                .sink_tick(Duration::from_millis(1))
                .max_uncommitted(ReplayBound {
                    records: 64,
                    bytes: u64::MAX,
                })
                .run(rt, Arc::new(job), &mut source, Box::new(sink));
            let _ = done_tx.send(summary.map(|s| s.messages));
        });
        let outcome = done_rx.recv_timeout(Duration::from_secs(120));
        stop.store(true, Ordering::SeqCst);
        if outcome.is_err() {
            rt.close();
        }
        let messages = outcome.expect("the run stalled after an abort").unwrap();
        assert!(messages >= N as u64);
    });
    let committed = sink.committed.lock().unwrap();
    let mut ids: Vec<i64> = committed.iter().map(|o| o.1.parse().unwrap()).collect();
    ids.sort_unstable();
    let dead = sink.dead.lock().unwrap();
    let mut dead_ids: Vec<i64> = dead.iter().map(|d| d.0.offset).collect();
    dead_ids.sort_unstable();
    let bad = |i: &i64| i % 997 == 13 || i % 1009 == 7;
    let want: Vec<i64> = (0..N).filter(|i| !bad(i)).collect();
    let want_dead: Vec<i64> = (0..N).filter(bad).collect();
    let aborts = sink.aborts.load(Ordering::SeqCst);
    eprintln!(
        "{} results and {} dead letters committed once each, through {aborts} aborts",
        ids.len(),
        dead_ids.len()
    );
    assert!(aborts > 0, "no transaction was aborted");
    assert_eq!(ids, want, "results lost or written twice");
    assert_eq!(dead_ids, want_dead, "dead letters lost or written twice");
    assert_eq!(sink.offsets.lock().unwrap().last(), Some(&(0, N)));
    assert_eq!(acks.uncommitted(), Uncommitted::default());
    rt.shutdown();
}

/// A record over the size cap is dead-lettered without running, with the
/// first bytes of it and the reason, and its offset is committed like any
/// other: on Kafka the record itself stays in the input topic.
#[test]
fn a_record_over_the_size_cap_is_dead_lettered_unrun_and_committed() {
    let rt = runtime(8);
    let big = "y".repeat(100 << 10);
    let input = vec![
        record(0, 0, "small"),
        record(0, 1, &big),
        record(0, 2, "also small"),
    ];
    let (mut source, acks, log) = Records::committing(input, 0);
    let sink = Collect::default();
    let summary = Driver::new()
        .max_record_bytes(1 << 10)
        .run(&rt, echo(), &mut source, Box::new(sink.clone()))
        .unwrap();
    assert_eq!(summary.outputs, 2);
    assert_eq!(summary.dead_letters, 1);
    let outputs = sink.payloads();
    assert_eq!(outputs.len(), 2);
    assert!(!outputs.iter().any(|o| o.starts_with('y')), "it ran");
    let dead = sink.dead.lock().unwrap();
    let (position, payload, reason) = &dead[0];
    assert_eq!(position.offset, 1);
    assert_eq!(
        payload.len(),
        64 << 10,
        "the dead letter keeps the first 64KiB"
    );
    assert_eq!(
        reason,
        "record of 102400 bytes is over the 1KiB cap (--max-record-bytes); \
         the dead letter keeps its first 65536 bytes"
    );
    assert_eq!(log.lock().unwrap().last().unwrap(), &vec![(0, 3)]);
    assert_eq!(acks.outstanding(), 0);
    rt.shutdown();
}

#[test]
fn a_record_with_an_output_larger_than_the_sink_takes_is_dead_lettered_and_committed() {
    let rt = runtime(8);
    let big = "z".repeat(500);
    let input = vec![
        record(0, 0, "small"),
        record(0, 1, &big),
        record(0, 2, "also small"),
    ];
    let (mut source, acks, log) = Records::committing(input, 0);
    let sink = Collect {
        output_limit: Some(100),
        ..Collect::default()
    };
    let summary = Driver::new()
        .run(&rt, echo(), &mut source, Box::new(sink.clone()))
        .unwrap();
    assert_eq!(summary.outputs, 2);
    assert_eq!(summary.dead_letters, 1);
    let mut outputs = sink.payloads();
    outputs.sort();
    assert_eq!(outputs, ["also small", "small"]);
    let dead = sink.dead.lock().unwrap();
    let (position, payload, reason) = &dead[0];
    assert_eq!((position.offset, payload), (1, &big), "the input, whole");
    assert_eq!(
        reason,
        "an output of 500 bytes (key and value) is larger than the 100 bytes the output \
         topic takes"
    );
    assert_eq!(log.lock().unwrap().last().unwrap(), &vec![(0, 3)]);
    assert_eq!(acks.outstanding(), 0);
    rt.shutdown();
}

/// A source that counts how many records it handed out.
struct Counted {
    inner: Records,
    polled: Arc<std::sync::atomic::AtomicU64>,
}

impl fila_connectors::Source for Counted {
    fn poll(
        &mut self,
        timeout: Duration,
    ) -> Result<fila_connectors::Polled, fila_connectors::ConnectorError> {
        let polled = self.inner.poll(timeout)?;
        if matches!(polled, fila_connectors::Polled::Record(_)) {
            self.polled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(polled)
    }
}

/// With `--ordered` on a source that does not commit, a slow first record
/// holds every later result in the reorder buffer: reading stops at the
/// bound, and resumes, in order, once it finishes.
#[test]
fn ordered_results_held_behind_a_slow_record_stop_reading_at_the_bound() {
    const BOUND: u64 = 50;
    let rt = runtime(4);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = release.clone();
    let job = Arc::new(
        Job::new("slow first")
            .decode(|input| Ok(input.payload().to_vec()))
            .map("hold", move |b: Vec<u8>| {
                while b == b"0" && !held.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(b)
            })
            .sink(|b: &Vec<u8>| b.clone()),
    );
    let polled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut source = Counted {
        inner: Records::new(numbered(2_000)),
        polled: polled.clone(),
    };
    let sink = Collect::default();
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            Driver::new()
                .ordered(true)
                .max_uncommitted(ReplayBound {
                    records: BOUND,
                    bytes: u64::MAX,
                })
                .sink_tick(Duration::from_millis(1))
                .run(&rt, job, &mut source, Box::new(sink.clone()))
        });
        // Reading stops once the bound is held.
        let mut last = u64::MAX;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while polled.load(Ordering::Relaxed) != last && std::time::Instant::now() < deadline {
            last = polled.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(last, BOUND, "records read while the first one is held");
        assert!(sink.outputs.lock().unwrap().is_empty());
        release.store(true, Ordering::Relaxed);
        let summary = run.join().unwrap().unwrap();
        assert_eq!(summary.outputs, 2_000);
    });
    let outputs = sink.payloads();
    let expected: Vec<String> = (0..2_000).map(|i| i.to_string()).collect();
    assert_eq!(outputs, expected);
    rt.shutdown();
}

/// `latest_per_key`: of a key's outputs in one batch of the sink only the
/// last is written, and in input order (it implies `ordered`), so each
/// key's written counts rise, none twice, and end at its count; what was
/// not written is counted as superseded.
#[test]
fn latest_per_key_writes_each_keys_last_output_of_a_batch() {
    const RECORDS: u64 = 20_000;
    const KEYS: u64 = 3;
    let job = Job::new("counts")
        .decode(|input| Ok(input.payload().to_vec()))
        .map("key", |n: Vec<u8>| {
            let n: u64 = String::from_utf8_lossy(&n).parse().unwrap();
            Ok((format!("k{}", n % KEYS), 1u64))
        })
        .key_by(|(key, _): &(String, u64)| key.clone())
        .reduce("count", |(key, a): &(String, u64), (_, b)| {
            Ok((key.clone(), a + b))
        })
        // A few counts take longer after the reduce than a batch of the
        // sink lasts (its linger, 100 ms), so that unordered they would
        // be written in a batch after later counts of their key.
        .map("slow", |(key, n): (String, u64)| {
            if n % 2_000 == 0 {
                std::thread::sleep(Duration::from_millis(150));
            }
            Ok((key, n))
        })
        .sink_keyed(|(key, n): &(String, u64)| {
            (Some(key.clone().into_bytes()), n.to_string().into_bytes())
        });
    let rt = runtime(64);
    let counters = Counters::default();
    let sink = Collect::default();
    let mut source = Records::new(numbered(RECORDS));
    let summary = Driver::new()
        .latest_per_key(true)
        .counters(&counters)
        .run(&rt, Arc::new(job), &mut source, Box::new(sink.clone()))
        .unwrap();
    rt.shutdown();
    let outputs = sink.outputs.lock().unwrap().clone();
    let superseded = counters.superseded.load(Ordering::Relaxed);
    assert_eq!(summary.outputs, outputs.len() as u64);
    assert_eq!(summary.outputs + superseded, RECORDS);
    // Thousands of updates of three keys cannot all land in batches of
    // their own.
    assert!(
        superseded > 0,
        "nothing superseded in {} outputs",
        outputs.len()
    );
    let mut last = std::collections::BTreeMap::<Vec<u8>, u64>::new();
    for (key, value) in &outputs {
        let key = key.clone().expect("every output has its key");
        let n: u64 = value.parse().unwrap();
        let before = last.insert(key.clone(), n).unwrap_or(0);
        assert!(n > before, "{} after {before} for {key:?}", n);
    }
    for k in 0..KEYS {
        let due = (0..RECORDS).filter(|n| n % KEYS == k).count() as u64;
        assert_eq!(last[format!("k{k}").as_bytes()], due, "key k{k}");
    }
}

/// `latest_per_key` under exactly-once, with commits refused and aborts
/// asked for at random moments: the committed values of each key rise,
/// none twice, and each key's last committed value is its last record's.
/// Every record emits its value twice, released together, so each record
/// supersedes at least one output whatever the timing.
#[test]
fn latest_per_key_under_aborted_transactions_commits_each_keys_values_in_order() {
    const N: i64 = 5_000;
    const KEYS: i64 = 3;
    let rt = runtime(32);
    let input: Vec<_> = (0..N).map(|i| record(0, i, &i.to_string())).collect();
    let (mut source, acks) = Records::rewindable(input);
    let sink = TxnSink::failing_every(3);
    let job = Job::new("keyed")
        .decode(|input| {
            Ok(String::from_utf8_lossy(input.payload())
                .parse::<i64>()
                .unwrap())
        })
        .flat_map("twice", |n: i64| Ok([n, n]))
        .sink_keyed(|n: &i64| {
            let key = format!("k{}", n % KEYS).into_bytes();
            (Some(key), n.to_string().into_bytes())
        });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let counters = Counters::default();
    std::thread::scope(|s| {
        let asker = sink.clone();
        s.spawn(|| ask_aborts_at_random(asker, &stop));
        let summary = Driver::new()
            .latest_per_key(true)
            .counters(&counters)
            .commit_interval(Duration::from_millis(2))
            .sink_tick(Duration::from_millis(1))
            .run(&rt, Arc::new(job), &mut source, Box::new(sink.clone()));
        stop.store(true, Ordering::SeqCst);
        summary.unwrap();
    });
    let committed = sink.committed.lock().unwrap();
    let mut last = std::collections::BTreeMap::<Vec<u8>, i64>::new();
    for (key, value) in committed.iter() {
        let key = key.clone().expect("every output has its key");
        let n: i64 = value.parse().unwrap();
        if let Some(before) = last.insert(key.clone(), n) {
            assert!(n > before, "{n} after {before} for {key:?}");
        }
    }
    for k in 0..KEYS {
        let due = (0..N).filter(|n| n % KEYS == k).max().unwrap();
        assert_eq!(last[format!("k{k}").as_bytes()], due, "key k{k}");
    }
    // At least one of each record's two outputs.
    assert!(counters.superseded.load(Ordering::Relaxed) >= N as u64);
    assert!(
        sink.aborts.load(Ordering::SeqCst) > 0,
        "no transaction was aborted"
    );
    assert_eq!(sink.offsets.lock().unwrap().last(), Some(&(0, N)));
    assert_eq!(acks.uncommitted(), Uncommitted::default());
    rt.shutdown();
}
