//! The driver with a job whose stage panics or rejects: the run goes on,
//! every record is accounted for, and every position is acknowledged.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use fila_connectors::{
    Acks, BurstSource, ConnectorError, Position, ReplayBound, Sink, Uncommitted,
};
use fila_pipeline::dataflow::{Job, Rejected};
use fila_pipeline::driver::{self, DriverConfig};
use fila_pipeline::metrics::Live;
use fila_runtime::{Runtime, Workers};

type DeadLetter = (Position, Vec<u8>, String);

#[derive(Clone, Default)]
struct Collect {
    outputs: Arc<Mutex<Vec<Vec<u8>>>>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
}

impl Sink for Collect {
    fn send(&mut self, _key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.outputs.lock().unwrap().push(payload.to_vec());
        Ok(())
    }
    fn dead_letter(
        &mut self,
        p: Position,
        _key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        self.dead
            .lock()
            .unwrap()
            .push((p, payload.to_vec(), reason.to_owned()));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
    fn has_dead_letter_destination(&self) -> bool {
        true
    }
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
    let rt = Runtime::builder()
        .workers(Workers::Count(2.try_into().unwrap()))
        .pin(false)
        .window(3)
        .build()
        .unwrap();
    let sink = Collect::default();
    let mut source = BurstSource::new(100, |i| {
        if i == 50 {
            b"x".to_vec()
        } else {
            i.to_string().into_bytes()
        }
    });
    let acks = Acks::new();
    let live = Live::default();
    let summary = driver::run(
        &rt,
        Arc::new(job),
        &mut source,
        Box::new(sink.clone()),
        &acks,
        &live,
        &AtomicBool::new(false),
        &DriverConfig::default(),
    )
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
        .any(|d| d.1 == b"x" && d.2.contains("not a number")));
    // The dead letter carries the original payload.
    assert!(panicked
        .iter()
        .all(|d| d.1 == d.0.offset.to_string().into_bytes()));

    let outputs = sink.outputs.lock().unwrap().len() as u64;
    assert_eq!(outputs + dead.len() as u64, 100);
    assert_eq!(
        (summary.messages, summary.outputs, summary.dead_letters),
        (100, outputs, dead.len() as u64)
    );
    assert_eq!(summary.panicked, panics_expected.len() as u64);
    assert_eq!(
        live.messages.load(std::sync::atomic::Ordering::Relaxed),
        100
    );
    // The live latency histogram counts every output, and only outputs.
    let page = fila_pipeline::metrics::render(&rt.stats(), &live, None);
    let count = format!("fila_record_latency_seconds_count {outputs}");
    assert!(page.lines().any(|l| l == count), "no {count:?} in\n{page}");
    assert_eq!(summary.latencies_us.len(), outputs);
    assert_eq!(acks.outstanding(), 0, "every position is acknowledged");
    assert_eq!(acks.committable(), vec![(0, 100)]);
    assert_eq!(rt.shutdown().failed, panics_expected.len() as u64);
}

/// Every commit that landed: the offsets it committed.
type CommitLog = Arc<Mutex<Vec<Vec<(i32, i64)>>>>;

/// A committing source of `n` numbered records on partition 0, whose
/// committer refuses its first `refusals` commits the way a broker does
/// while a group rebalances: nothing committed, no error.
struct Replayable {
    n: u64,
    next: u64,
    refusals: u32,
    commits: CommitLog,
}

struct Refusing {
    refusals: u32,
    commits: CommitLog,
}

impl fila_connectors::Committer for Refusing {
    fn commit(&mut self, acks: &Acks) -> Result<(), ConnectorError> {
        if self.refusals > 0 {
            self.refusals -= 1;
            return Ok(());
        }
        let offsets = acks.committable();
        acks.mark_committed(&offsets);
        self.commits.lock().unwrap().push(offsets);
        Ok(())
    }
}

impl fila_connectors::Source for Replayable {
    fn poll(
        &mut self,
        _timeout: std::time::Duration,
    ) -> Result<fila_connectors::Polled, ConnectorError> {
        if self.next == self.n {
            return Ok(fila_connectors::Polled::End);
        }
        self.next += 1;
        Ok(fila_connectors::Polled::Record(fila_connectors::Envelope {
            key: None,
            headers: Vec::new(),
            timestamp: None,
            payload: self.next.to_string().into_bytes(),
            position: Position {
                partition: 0,
                offset: self.next as i64 - 1,
            },
            arrived: std::time::Instant::now(),
        }))
    }

    fn committer(&mut self) -> Result<Option<Box<dyn fila_connectors::Committer>>, ConnectorError> {
        Ok(Some(Box::new(Refusing {
            refusals: self.refusals,
            commits: self.commits.clone(),
        })))
    }
}

/// With the uncommitted bound full, no record is acknowledged, so only a
/// retry of the refused commit can let the source read on. Without one,
/// this run never ends (the test then fails on its time bound).
#[test]
fn a_refused_commit_is_offered_again_and_the_run_goes_on() {
    let rt = Runtime::builder()
        .workers(Workers::Count(2.try_into().unwrap()))
        .pin(false)
        .window(4)
        .build()
        .unwrap();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let mut source = Replayable {
        n: 40,
        next: 0,
        refusals: 3,
        commits: commits.clone(),
    };
    let job = Job::new("echo")
        .decode(|input| Ok(input.payload().to_vec()))
        .sink(|b: &Vec<u8>| b.clone());
    let sink = Collect::default();
    let acks = Acks::new();
    let config = DriverConfig {
        max_uncommitted: ReplayBound {
            records: 4,
            bytes: u64::MAX,
        },
        commit_interval: std::time::Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let summary = driver::run(
                &rt,
                Arc::new(job),
                &mut source,
                Box::new(sink.clone()),
                &acks,
                &Live::default(),
                &AtomicBool::new(false),
                &config,
            );
            let _ = done_tx.send(summary.map(|s| s.outputs));
        });
        let outcome = done_rx.recv_timeout(std::time::Duration::from_secs(60));
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
/// `config`, and returns the commits that landed.
fn run_committing(n: u64, config: &DriverConfig) -> Vec<Vec<(i32, i64)>> {
    let rt = Runtime::builder()
        .workers(Workers::Count(2.try_into().unwrap()))
        .pin(false)
        .build()
        .unwrap();
    let commits = CommitLog::default();
    let mut source = Replayable {
        n,
        next: 0,
        refusals: 0,
        commits: commits.clone(),
    };
    let job = Job::new("echo")
        .decode(|input| Ok(input.payload().to_vec()))
        .sink(|b: &Vec<u8>| b.clone());
    let acks = Acks::new();
    let summary = driver::run(
        &rt,
        Arc::new(job),
        &mut source,
        Box::new(Collect::default()),
        &acks,
        &Live::default(),
        &AtomicBool::new(false),
        config,
    )
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
    let config = DriverConfig {
        commit_interval: std::time::Duration::from_secs(3600),
        ..DriverConfig::default()
    };
    assert_eq!(run_committing(20_000, &config).len(), 1);
}

/// Near the replay bound the commit thread commits at once instead of
/// waiting out the interval, so a small bound paces reading by commits
/// (without it this run would wait an hour for its first commit).
#[test]
fn a_source_at_half_the_replay_bound_gets_a_commit_at_once() {
    let config = DriverConfig {
        commit_interval: std::time::Duration::from_secs(3600),
        max_uncommitted: ReplayBound {
            records: 100,
            bytes: u64::MAX,
        },
        ..DriverConfig::default()
    };
    let commits = run_committing(2_000, &config);
    // At most 100 uncommitted at a time: at least 20 commits.
    assert!(commits.len() >= 20, "{} commits", commits.len());
    let mut last = 0;
    for c in &commits {
        let (_, offset) = c[0];
        assert!(offset > last && offset - last <= 100, "{commits:?}");
        last = offset;
    }
}
