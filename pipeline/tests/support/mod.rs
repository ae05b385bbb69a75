//! What this crate's tests share. In process: a sink that keeps what it
//! is given, and a source of prepared records that can commit. Against
//! real Kafka brokers: the brokers that `scripts/test` starts, `fila run`
//! as a child process, and producing and reading back topics. Every wait
//! is bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fila_connectors::{
    Acks, ClientKind, Committer, Committing, ConnectorError, Envelope, Fetched, Polled, Position,
    Sink, Source, TopicReader, TopicWriter, Uncommitted,
};
use fila_pipeline::reference::{fib, message, FibRecord};
use serde_json::Value;

/// An output as [`Collect`] keeps it: its key, and its payload as text.
pub type Output = (Option<Vec<u8>>, String);
/// A dead letter as [`Collect`] keeps it: where the record was, its payload
/// as text, and the reason.
pub type DeadLetter = (Position, String, String);

/// A sink that keeps everything it is given, with a dead-letter
/// destination. Clones share what they keep.
#[derive(Clone, Default)]
pub struct Collect {
    pub outputs: Arc<Mutex<Vec<Output>>>,
    pub dead: Arc<Mutex<Vec<DeadLetter>>>,
    /// What it says of [`Sink::output_limit`].
    pub output_limit: Option<usize>,
}

impl Collect {
    /// The payloads written so far, in order.
    pub fn payloads(&self) -> Vec<String> {
        self.outputs
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.1.clone())
            .collect()
    }
}

impl Sink for Collect {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        let payload = String::from_utf8_lossy(payload).into_owned();
        let output = (key.map(<[u8]>::to_vec), payload);
        self.outputs.lock().unwrap().push(output);
        Ok(())
    }

    fn dead_letter(
        &mut self,
        p: Position,
        _key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let payload = String::from_utf8_lossy(payload).into_owned();
        self.dead
            .lock()
            .unwrap()
            .push((p, payload, reason.to_owned()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn has_dead_letter_destination(&self) -> bool {
        true
    }

    fn output_limit(&self) -> Option<usize> {
        self.output_limit
    }
}

/// Every commit that landed: the offsets it committed.
pub type CommitLog = Arc<Mutex<Vec<Vec<(i32, i64)>>>>;

/// A bounded source over prepared records. [`Records::committing`] makes
/// it one that commits, the way a Kafka source does, into a [`CommitLog`].
pub struct Records {
    records: std::vec::IntoIter<Envelope>,
    committing: Option<(Arc<Acks>, RecordingCommitter)>,
    /// For [`Records::rewindable`]: every record, to read again from a
    /// rewind, and the tracker it rewinds.
    all: Option<(Vec<Envelope>, Arc<Acks>)>,
}

impl Records {
    /// A source of `records` that commits nothing.
    pub fn new(records: Vec<Envelope>) -> Records {
        Records {
            records: records.into_iter(),
            committing: None,
            all: None,
        }
    }

    /// A source of `records` (partition 0, offsets from 0) for a sink that
    /// commits in transactions: it rewinds to the last commit when told.
    pub fn rewindable(records: Vec<Envelope>) -> (Records, Arc<Acks>) {
        let (mut source, acks, _) = Records::committing(records.clone(), 0);
        source.all = Some((records, acks.clone()));
        (source, acks)
    }

    /// A source of `records` that commits, whose committer refuses its
    /// first `refusals` commits the way a broker does while a group
    /// rebalances: nothing committed, no error.
    pub fn committing(records: Vec<Envelope>, refusals: u32) -> (Records, Arc<Acks>, CommitLog) {
        let acks = Arc::new(Acks::new());
        let log = CommitLog::default();
        let committer = RecordingCommitter {
            acks: acks.clone(),
            refusals,
            log: log.clone(),
        };
        let source = Records {
            records: records.into_iter(),
            committing: Some((acks.clone(), committer)),
            all: None,
        };
        (source, acks, log)
    }
}

impl Source for Records {
    fn poll(&mut self, _: Duration) -> Result<Polled, ConnectorError> {
        if let Some(record) = self.records.next() {
            return Ok(Polled::Record(record));
        }
        // A rewindable source ends once everything is committed: until
        // then an aborted transaction may send it back.
        match &self.all {
            Some((_, acks))
                if acks.outstanding() > 0 || acks.uncommitted() != Uncommitted::default() =>
            {
                std::thread::sleep(Duration::from_millis(1));
                Ok(Polled::Idle)
            }
            _ => Ok(Polled::End),
        }
    }

    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(self.committing.take().map(|(acks, committer)| Committing {
            acks,
            committer: Box::new(committer),
        }))
    }

    fn rewind(&mut self) -> Result<(), ConnectorError> {
        let (all, acks) = self.all.as_ref().expect("a rewindable source");
        let at = acks.rewind();
        let from = at.iter().find(|(p, _)| *p == 0).map_or(0, |&(_, o)| o);
        let rest: Vec<Envelope> = all.iter().skip(from as usize).cloned().collect();
        self.records = rest.into_iter();
        Ok(())
    }
}

/// A sink whose transactions are kept in memory: what each committed
/// transaction held, and the offsets committed with it. Every `fail_every`
/// -th commit is refused as a broker would abort it, and
/// [`TxnSink::request_abort`] asks for an abort as a rebalance does.
#[derive(Clone, Default)]
pub struct TxnSink {
    pub committed: Arc<Mutex<Vec<Output>>>,
    pub dead: Arc<Mutex<Vec<DeadLetter>>>,
    pub offsets: Arc<Mutex<Vec<(i32, i64)>>>,
    pub aborts: Arc<std::sync::atomic::AtomicU64>,
    pending: Vec<Output>,
    pending_dead: Vec<DeadLetter>,
    commits: u64,
    pub fail_every: u64,
    abort_asked: Arc<std::sync::atomic::AtomicBool>,
}

impl TxnSink {
    /// A sink that refuses every `fail_every`-th commit (never, with 0).
    pub fn failing_every(fail_every: u64) -> TxnSink {
        TxnSink {
            fail_every,
            ..TxnSink::default()
        }
    }

    pub fn request_abort(&self) {
        self.abort_asked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Sink for TxnSink {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        let payload = String::from_utf8_lossy(payload).into_owned();
        self.pending.push((key.map(<[u8]>::to_vec), payload));
        Ok(())
    }

    fn dead_letter(
        &mut self,
        p: Position,
        _key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let payload = String::from_utf8_lossy(payload).into_owned();
        self.pending_dead.push((p, payload, reason.to_owned()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn has_dead_letter_destination(&self) -> bool {
        true
    }

    fn transactions(&mut self) -> Option<&mut dyn fila_connectors::Transactions> {
        Some(self)
    }
}

impl fila_connectors::Transactions for TxnSink {
    fn abort_requested(&self) -> bool {
        self.abort_asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn commit(&mut self, acks: &Acks) -> Result<bool, fila_connectors::TransactionError> {
        self.commits += 1;
        if self.fail_every > 0 && self.commits % self.fail_every == 0 {
            return Err(fila_connectors::TransactionError::Abort(
                "refused, as a broker would".into(),
            ));
        }
        let offsets = acks.committable();
        self.committed.lock().unwrap().append(&mut self.pending);
        self.dead.lock().unwrap().append(&mut self.pending_dead);
        self.offsets.lock().unwrap().extend(&offsets);
        acks.mark_committed(&offsets);
        Ok(true)
    }

    fn abort(&mut self) -> Result<(), ConnectorError> {
        self.pending.clear();
        self.pending_dead.clear();
        self.abort_asked
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.aborts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

struct RecordingCommitter {
    acks: Arc<Acks>,
    refusals: u32,
    log: CommitLog,
}

impl Committer for RecordingCommitter {
    fn commit(&mut self) -> Result<bool, ConnectorError> {
        if self.refusals > 0 {
            self.refusals -= 1;
            return Ok(false);
        }
        let offsets = self.acks.committable();
        self.acks.mark_committed(&offsets);
        self.log.lock().unwrap().push(offsets);
        Ok(true)
    }
}

/// A record of `payload` at `partition`, `offset`.
pub fn record(partition: i32, offset: i64, payload: &str) -> Envelope {
    Envelope {
        key: None,
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        timestamp: None,
        position: Position { partition, offset },
        arrived: Instant::now(),
    }
}

/// Numbered records on partition 0.
pub fn lines(payloads: &[&str]) -> Vec<Envelope> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| record(0, i as i64, p))
        .collect()
}

/// `n` records on partition 0, each its offset as text.
pub fn numbered(n: u64) -> Vec<Envelope> {
    (0..n as i64)
        .map(|i| record(0, i, &i.to_string()))
        .collect()
}

/// Runs `scripts/kafka` with `args`; its stdout.
pub fn scripts_kafka(args: &[&str]) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka"))
        .args(args)
        .output()
        .expect("scripts/kafka runs");
    assert!(
        out.status.success(),
        "scripts/kafka {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The port of `host:port`.
pub fn port_of(brokers: &str) -> String {
    brokers
        .rsplit_once(':')
        .expect("brokers as host:port")
        .1
        .to_owned()
}

/// The 3.9 broker: both clients work there.
pub fn brokers_3x() -> String {
    let brokers = std::env::var("FILA_TEST_BROKERS")
        .expect("FILA_TEST_BROKERS must name the 3.9 test broker (scripts/test sets it)");
    ready_coordinator(&brokers);
    brokers
}

/// The 4.x broker: rdkafka only, KIP-848 groups.
pub fn brokers_4x() -> String {
    let brokers = std::env::var("FILA_TEST_BROKERS_4X")
        .expect("FILA_TEST_BROKERS_4X must name the 4.x test broker (scripts/test sets it)");
    ready_coordinator(&brokers);
    brokers
}

/// Waits, once per broker and test process, until the broker's group
/// coordinator takes an offset commit. A broker just started loads its
/// offsets topic first, and meanwhile answers a new member's offset fetch
/// with "not coordinator". librdkafka does not fetch again by itself, and
/// fila assigns the partitions again once two of its statistics reports
/// show them unstarted, two or three seconds later; waiting here keeps
/// that detour out of tests about something else.
pub fn ready_coordinator(brokers: &str) {
    static READY: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if ready.iter().any(|b| b == brokers) {
        return;
    }
    const TOPIC: &str = "fila-test-coordinator";
    let _ = fila_connectors::create_topic(brokers, TOPIC, 1);
    let mut calls = fila_connectors::BoundedCall::new("fila-test-coordinator");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let cluster = brokers.to_owned();
        let answer = calls.call(Duration::from_secs(20), move || {
            fila_connectors::commit_group_offsets(
                ClientKind::Rdkafka,
                cluster.as_str(),
                TOPIC,
                TOPIC,
                &[(0, 0)],
            )
            .map_err(|e| e.to_string())
        });
        match answer {
            Ok(Ok(())) => break,
            other => assert!(
                Instant::now() < deadline,
                "the group coordinator of {brokers} never took a commit: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ready.push(brokers.to_owned());
}

/// Topic and group names unique to one test run.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A `fila run --source kafka` child, killed if the test ends early.
pub struct Fila {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// An example's binary, built by `cargo test` next to the test's own
/// directory (`target/<profile>/examples`).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples before it runs the tests",
        path.display()
    );
    path
}

impl Fila {
    pub fn start(brokers: &str, args: &[&str]) -> Fila {
        Fila::spawn(
            Command::new(env!("CARGO_BIN_EXE_fila")).arg("run"),
            brokers,
            args,
        )
    }

    /// The example `name` (which takes `fila run`'s flags) on Kafka.
    pub fn start_example(name: &str, brokers: &str, args: &[&str]) -> Fila {
        Fila::spawn(&mut Command::new(example(name)), brokers, args)
    }

    fn spawn(command: &mut Command, brokers: &str, args: &[&str]) -> Fila {
        let dir = std::env::temp_dir();
        let tag = unique("fila-run");
        let (stdout, stderr) = (
            dir.join(format!("{tag}.out")),
            dir.join(format!("{tag}.err")),
        );
        let child = command
            .args([
                "--source",
                "kafka",
                "--brokers",
                brokers,
                "--report",
                "json",
            ])
            .args(args)
            // `info` shows the group's events in a failing test's output;
            // FILA_TEST_LOG overrides it (with FILA_RDKAFKA_DEBUG, say).
            .env(
                "FILA_LOG",
                std::env::var("FILA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
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

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The address of `--metrics-addr 127.0.0.1:0`, once fila has said it.
    pub fn metrics_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.stderr().lines().find_map(|l| {
                l.strip_prefix("fila: metrics on http://")?
                    .strip_suffix("/metrics")
                    .map(str::to_owned)
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics address: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log says this member got partitions (or, with a
    /// static assignment, started reading).
    pub fn wait_assigned(&mut self) {
        self.wait_logged("partitions assigned");
    }

    /// Waits until the log holds `what`, failing if the process exits
    /// first or a minute passes.
    pub fn wait_logged(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stderr().contains(what) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "exited before logging {what:?}: {}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "{what:?} not logged: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit status and the JSON report. The stop must
    /// come within `limit`.
    pub fn stop_within(mut self, limit: Duration) -> Value {
        self.terminate(limit)
    }

    /// `stop_within`, leaving the process's output files in place.
    fn terminate(&mut self, limit: Duration) -> Value {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let status = self.wait(limit);
        assert!(
            status.success(),
            "fila run exited with {status}: {}",
            self.stderr()
        );
        let out = std::fs::read_to_string(&self.stdout).unwrap();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("report {out:?}: {e}"))
    }

    pub fn stop(self) -> Value {
        self.stop_within(Duration::from_secs(60))
    }

    /// `stop`, and everything the run wrote on stderr.
    pub fn stop_with_stderr(mut self) -> (Value, String) {
        let report = self.terminate(Duration::from_secs(60));
        (report, self.stderr())
    }

    /// SIGKILL: a crash, with no chance to flush or commit.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fila run did not stop within {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fila {
    /// Stops the process, and removes its output files, unless the test is
    /// failing while this is alive or FILA_TEST_KEEP_LOGS is set: then
    /// they stay in the temporary directory for a look. (A test that fails
    /// after it stopped fila has had them removed; set the variable.)
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() && std::env::var_os("FILA_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.stdout);
            let _ = std::fs::remove_file(&self.stderr);
        }
    }
}

pub fn produce(brokers: &str, topic: &str, values: &[Vec<u8>]) {
    let mut writer = TopicWriter::connect(ClientKind::Rdkafka, brokers, &[topic]).unwrap();
    let records: Vec<(&str, &[u8])> = values.iter().map(|v| (topic, v.as_slice())).collect();
    writer.send_all(&records).unwrap();
}

/// Reference messages with ids 0..n.
pub fn produce_messages(brokers: &str, topic: &str, n: u64, stages: [u32; 5]) {
    let values: Vec<Vec<u8>> = (0..n).map(|id| message(id, stages, 0)).collect();
    produce(brokers, topic, &values);
}

/// Everything in `topic` so far, from the beginning of every partition,
/// reading until at least `at_least` records or `limit`.
pub fn read_all(brokers: &str, topic: &str, at_least: usize, limit: Duration) -> Vec<Fetched> {
    try_read_all(brokers, topic, at_least, limit).unwrap()
}

/// Everything in `topic` once it holds every id of `0..n`, or at `limit`
/// (the caller then finds the ids missing). Reading until a count is not
/// enough where duplicates are allowed: they make up the count while the
/// last ids are still on their way.
pub fn read_every_id(brokers: &str, topic: &str, n: u64, limit: Duration) -> Vec<Fetched> {
    let deadline = Instant::now() + limit;
    loop {
        // Each read gets a few seconds even past the deadline, so the last
        // one reads the whole topic rather than a first fetch of it.
        let left = deadline.saturating_duration_since(Instant::now());
        let out = read_all(brokers, topic, n as usize, left.max(Duration::from_secs(5)));
        if lost_and_duplicates(&out, n).0.is_empty() || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// [`read_all`], with the client's error returned rather than a panic.
pub fn try_read_all(
    brokers: &str,
    topic: &str,
    at_least: usize,
    limit: Duration,
) -> Result<Vec<Fetched>, ConnectorError> {
    let client = ClientKind::Rdkafka;
    let start: BTreeMap<i32, i64> = TopicReader::end_offsets(client, brokers, topic)?
        .into_keys()
        .map(|p| (p, 0))
        .collect();
    let mut reader = TopicReader::new(client, brokers, topic, start)?;
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let batch = reader.fetch()?;
        let empty = batch.is_empty();
        out.extend(batch);
        if (out.len() >= at_least && empty) || Instant::now() > deadline {
            return Ok(out);
        }
    }
}

/// Every committed record of `topic` from its start to its end as it is
/// now: the reader reads each partition to its end once, and then takes
/// what it read.
pub fn read_to_end(brokers: &str, topic: &str, start: BTreeMap<i32, i64>) -> Vec<Fetched> {
    let mut reader = TopicReader::new(ClientKind::Rdkafka, brokers, topic, start).unwrap();
    assert!(
        reader.wait_caught_up(Duration::from_secs(30)).unwrap(),
        "{topic} was not read to its end within 30 s"
    );
    let mut out = Vec::new();
    loop {
        let batch = reader.fetch().unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// How far `topic` has been written: the sum of its end offsets. Under
/// exactly-once each committed transaction adds a marker per partition, so
/// this counts a few more than the records.
pub fn count(brokers: &str, topic: &str) -> usize {
    TopicReader::end_offsets(ClientKind::Rdkafka, brokers, topic)
        .unwrap()
        .values()
        .sum::<i64>() as usize
}

pub fn wait_for_outputs(brokers: &str, topic: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(brokers, topic) < n {
        assert!(Instant::now() < deadline, "outputs stalled below {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn ids_of(records: &[Fetched]) -> HashMap<u64, usize> {
    let mut ids = HashMap::new();
    for r in records {
        let r: FibRecord = serde_json::from_slice(&r.payload).unwrap();
        *ids.entry(r.id).or_default() += 1;
    }
    ids
}

pub fn check_fibs(records: &[Fetched]) {
    for r in records {
        let r: FibRecord = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(
            r.fibs(),
            r.stages().map(|n| Some(fib(n))),
            "record {}",
            r.id
        );
    }
}

/// Lost ids (asserted none) and duplicates of ids 0..n in `records`.
pub fn lost_and_duplicates(records: &[Fetched], n: u64) -> (Vec<u64>, usize) {
    let ids = ids_of(records);
    let missing: Vec<u64> = (0..n).filter(|id| !ids.contains_key(id)).collect();
    let duplicates = ids.values().map(|&c| c - 1).sum();
    (missing, duplicates)
}

pub fn metric(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

pub fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut stream, &mut page).unwrap();
    page
}

/// A stream of reference messages, ids 0..n, produced at a steady rate
/// over `over` by a thread of its own: whatever the machine's speed, the
/// members act while records are still arriving.
pub struct Trickle {
    thread: std::thread::JoinHandle<()>,
    release: Option<std::sync::mpsc::Sender<()>>,
}

impl Trickle {
    pub fn start(brokers: &str, topic: &str, n: u64, over: Duration) -> Trickle {
        Trickle::holding(brokers, topic, n, over, n)
    }

    /// As `start`, but the stream stops at id `hold_at` until `release`:
    /// a test that stops or kills a member mid-stream releases the rest
    /// after the stop, so records still arrive after it however slow the
    /// machine (a stream paced by time alone can end first on a busy one).
    pub fn holding(brokers: &str, topic: &str, n: u64, over: Duration, hold_at: u64) -> Trickle {
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut writer =
                TopicWriter::connect(ClientKind::Rdkafka, &brokers, &[&topic]).unwrap();
            let mut started = Instant::now();
            let step = Duration::from_millis(50);
            let per_step = (n as f64 * step.as_secs_f64() / over.as_secs_f64()).ceil() as u64;
            let (mut id, mut steps) = (0, 0u32);
            while id < n {
                if id == hold_at {
                    // Either a release or the test's end (the sender
                    // dropped) lets the rest go.
                    let _ = released.recv();
                    started = Instant::now();
                    steps = 0;
                }
                let last = (id + per_step).min(n);
                let last = if id < hold_at {
                    last.min(hold_at)
                } else {
                    last
                };
                let values: Vec<Vec<u8>> = (id..last)
                    .map(|i| message(i, [10, 20, 30, 20, 10], 0))
                    .collect();
                id = last;
                steps += 1;
                let records: Vec<(&str, &[u8])> = values
                    .iter()
                    .map(|v| (topic.as_str(), v.as_slice()))
                    .collect();
                writer.send_all(&records).unwrap();
                let due = started + step * steps;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        });
        Trickle {
            thread,
            release: Some(release),
        }
    }

    /// Lets a held stream go on.
    pub fn release(&mut self) {
        self.release.take();
    }

    pub fn join(mut self) {
        self.release();
        self.thread
            .join()
            .expect("the producer thread does not panic");
    }
}
