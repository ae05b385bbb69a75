//! The counters of a run: bumped by the driver's sink thread as records
//! finish, read by the report and the metrics page.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fila_connectors::{Acks, SourceStatus, Uncommitted};

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds, in seconds, of the latency histogram's buckets: 1, 2.5
/// and 5 per decade from 10 µs to 10 s. A record takes tens of
/// microseconds through an idle pipeline and up to seconds behind a full
/// window on a loaded one; above 10 s only `+Inf` counts it.
pub const LATENCY_BUCKETS: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds, in seconds, of the commit-time histogram's buckets: 1,
/// 2.5 and 5 per decade from 1 ms to 10 s.
pub const COMMIT_BUCKETS: [f64; 13] = [
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
];

/// Counters the driver's threads bump as records finish and commits land.
#[derive(Debug)]
pub struct Counters {
    pub messages: AtomicU64,
    /// Records read from the source, and their bytes (a record over the
    /// size cap counts whole).
    pub input_records: AtomicU64,
    pub input_bytes: AtomicU64,
    /// Records handed to the runtime as units: what the health check
    /// compares with the units the runtime finished.
    pub submitted: AtomicU64,
    pub outputs: AtomicU64,
    /// Bytes of the outputs written (payloads).
    pub output_bytes: AtomicU64,
    pub dead_letters: AtomicU64,
    pub panicked: AtomicU64,
    /// Latency of each output, in seconds, as the run's report measures it:
    /// from when the record became available to fila (for the burst
    /// generator, the start of the burst) until its last stage emitted the
    /// output. Buckets are [`LATENCY_BUCKETS`].
    pub latency: Histogram,
    /// Commits that landed: offset commits, or under exactly-once,
    /// transactions committed.
    pub commits: AtomicU64,
    /// Under exactly-once, transactions aborted.
    pub aborts: AtomicU64,
    /// How long each commit took, in seconds ([`COMMIT_BUCKETS`]).
    pub commit_seconds: Histogram,
    /// Restores of a partition's keyed state from its changelogs, the
    /// changelog records they read, and the microseconds they took.
    pub restores: AtomicU64,
    pub restored_records: AtomicU64,
    pub restore_micros: AtomicU64,
    /// The offset tracker of the run's source, if it commits: what the
    /// uncommitted gauges read.
    tracker: Mutex<Option<Arc<Acks>>>,
    /// What the run's source says of itself, if anything.
    source: Mutex<Option<Arc<SourceStatus>>>,
    phase: AtomicU8,
}

/// Where a run is, for the readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, calibrating: not yet reading.
    Starting = 0,
    /// Reading its source.
    Running = 1,
    /// The source ended or a stop was asked for: draining what is in
    /// flight.
    Stopping = 2,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            messages: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
            commits: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            restores: AtomicU64::new(0),
            restored_records: AtomicU64::new(0),
            restore_micros: AtomicU64::new(0),
            tracker: Mutex::new(None),
            source: Mutex::new(None),
            phase: AtomicU8::new(Phase::Starting as u8),
            input_records: AtomicU64::new(0),
            input_bytes: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Reads the uncommitted records from `acks` from now on.
    pub(crate) fn watch(&self, acks: Arc<Acks>) {
        *self.tracker.lock().unwrap_or_else(|p| p.into_inner()) = Some(acks);
    }

    /// Reads the source's own status from now on.
    pub(crate) fn watch_source(&self, status: Arc<SourceStatus>) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// What the run's source says of itself, if it says anything.
    pub fn source(&self) -> Option<Arc<SourceStatus>> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            _ => Phase::Stopping,
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    /// A record of `bytes` was read.
    pub(crate) fn read(&self, bytes: u64) {
        // One writer (the source loop): no read-modify-write needed.
        self.input_records
            .store(self.input_records.load(Relaxed) + 1, Relaxed);
        self.input_bytes
            .store(self.input_bytes.load(Relaxed) + bytes, Relaxed);
    }

    /// For a source that commits: the records read and not yet committed.
    pub fn uncommitted(&self) -> Option<Uncommitted> {
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        tracker.as_ref().map(|acks| acks.uncommitted())
    }

    /// A commit landed after `took`.
    pub(crate) fn committed(&self, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// A partition's state was restored from `records` changelog records
    /// in `took`.
    pub(crate) fn restored(&self, records: u64, took: Duration) {
        self.restores.fetch_add(1, Relaxed);
        self.restored_records.fetch_add(records, Relaxed);
        self.restore_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// A transaction was aborted.
    pub(crate) fn aborted(&self) {
        self.aborts.fetch_add(1, Relaxed);
    }

    /// Records the latency of one output.
    pub fn record_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }
}
