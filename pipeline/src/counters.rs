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
    /// Outputs not written under `--latest-per-key`: a later output of
    /// their key came in the same batch.
    pub superseded: AtomicU64,
    /// Records of combining repartitions (`reduce_combined`) folded into
    /// an earlier one of their key before it was written.
    pub combined: AtomicU64,
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
    /// The offset trackers of the run's sources that commit, one per
    /// segment of a re-keyed job: what the uncommitted gauges add up.
    trackers: Mutex<Vec<Arc<Acks>>>,
    /// What the run's sources say of themselves, one per segment.
    sources: Mutex<Vec<Arc<SourceStatus>>>,
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
            superseded: AtomicU64::new(0),
            combined: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
            commits: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            restores: AtomicU64::new(0),
            restored_records: AtomicU64::new(0),
            restore_micros: AtomicU64::new(0),
            trackers: Mutex::new(Vec::new()),
            sources: Mutex::new(Vec::new()),
            phase: AtomicU8::new(Phase::Starting as u8),
            input_records: AtomicU64::new(0),
            input_bytes: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Adds the uncommitted records of `acks` (a segment's source) to
    /// the gauges from now on.
    pub(crate) fn watch(&self, acks: Arc<Acks>) {
        add_once(&self.trackers, acks);
    }

    /// Reads a segment's source's own status from now on.
    pub(crate) fn watch_source(&self, status: Arc<SourceStatus>) {
        add_once(&self.sources, status);
    }

    /// What the run's sources say of themselves: one per segment whose
    /// source says anything (Kafka).
    pub fn sources(&self) -> Vec<Arc<SourceStatus>> {
        self.sources
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

    /// A record of `bytes` was read. Each segment of a re-keyed job
    /// reads on a thread of its own, so these add atomically.
    pub(crate) fn read(&self, bytes: u64) {
        self.input_records.fetch_add(1, Relaxed);
        self.input_bytes.fetch_add(bytes, Relaxed);
    }

    /// For sources that commit: the records read and not yet committed,
    /// added up over the run's segments.
    pub fn uncommitted(&self) -> Option<Uncommitted> {
        let trackers = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        if trackers.is_empty() {
            return None;
        }
        Some(trackers.iter().map(|acks| acks.uncommitted()).fold(
            Uncommitted::default(),
            |sum, u| Uncommitted {
                records: sum.records + u.records,
                bytes: sum.bytes + u.bytes,
            },
        ))
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

/// Adds `item` to `list` unless that very one is there already (a driver
/// run again on the same counters).
fn add_once<T>(list: &Mutex<Vec<Arc<T>>>, item: Arc<T>) {
    let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
    if !list.iter().any(|known| Arc::ptr_eq(known, &item)) {
        list.push(item);
    }
}
