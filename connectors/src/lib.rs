//! Sources and sinks for fila pipelines, and the bookkeeping that makes
//! delivery at-least-once: a record's position is committed only after
//! everything at or below it has been acknowledged downstream.
//!
//! This crate knows nothing of the scheduler. A driver pulls [`Envelope`]s
//! from a [`Source`], runs them wherever it likes, and hands the results to
//! a [`Sink`]. A source whose positions can be committed owns an [`Acks`]
//! tracker and hands it out with its committer ([`Committing`]): the driver
//! tracks each record it takes and acknowledges each one finished there.

mod acks;
mod bounded;
mod error;
mod generate;
mod kafka;
mod stdio;
pub mod units;

pub use acks::{Ack, Acks, ReplayBound, Uncommitted};
pub use bounded::{BoundedCall, Unanswered};
pub use error::ConnectorError;
pub use generate::BurstSource;
pub use kafka::commit_group_offsets;
pub use kafka::{
    changelog_reader, create_changelog, create_repartition, create_topic, create_topic_configured,
    kafka_exactly_once, kafka_sink, kafka_source, redact, Assignment, BrokerVersions, ClientKind,
    ClientProperties, Cluster, Fetched, GroupProtocol, KeyedRecord, OffsetReset, Replica,
    SinkConfig, SourceConfig, TopicReader, TopicWriter, DEFAULT_RETRY_TIMEOUT, DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER, DRAIN_TIMEOUT,
    MAX_EXACTLY_ONCE_INTERVAL,
};
pub use stdio::{DiscardSink, StdinSource, StdoutSink, DEFAULT_MAX_RECORD_BYTES};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a record came from: a partition and an offset in it. Sources
/// without partitions use partition 0 and number their records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// One record as it comes out of a source.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The record's key, for sources that have one (Kafka). An output
    /// keeps its input's key unless the job sets another.
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The record's headers (Kafka), in order; empty elsewhere.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (Kafka), in milliseconds since the Unix
    /// epoch.
    pub timestamp: Option<i64>,
    pub position: Position,
    /// When the record became available to fila. For the burst generator
    /// that is the start of the burst, for every record.
    pub arrived: Instant,
}

/// What a poll of a source found.
#[derive(Debug)]
pub enum Polled {
    Record(Envelope),
    /// A record over the source's size cap: its first bytes, and its
    /// whole size. The driver dead-letters it without running it.
    Oversized(Envelope, u64),
    /// Nothing arrived within the timeout; poll again.
    Idle,
    /// The source is exhausted (end of file, end of burst).
    End,
}

/// A stream of records. The driver calls `poll` only when it holds a window
/// slot, so a source never reads ahead of what fila can take in.
pub trait Source: Send {
    /// The next record, waiting at most about `timeout` for one.
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError>;

    /// Called by the driver instead of `poll` while it cannot take a
    /// record (the uncommitted bound is full), about every poll timeout.
    /// A source whose client needs polling for its own sake (a consumer
    /// group's rebalances) does that here, and hands nothing out.
    fn keep_alive(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// What the source says of itself to the metrics and health
    /// endpoints (Kafka: readiness, consumer lag, rebalances).
    fn status(&self) -> Option<Arc<SourceStatus>> {
        None
    }

    /// For sources whose positions can be committed (Kafka): the tracker
    /// the source keeps its partitions in, and what commits them. The
    /// driver tracks and acknowledges every record it takes in that
    /// tracker, and calls the committer from a commit thread of its own.
    /// `None` for sources that cannot be replayed anyway (a burst, stdin).
    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(None)
    }

    /// Goes back to the last committed position of every partition whose
    /// records it handed out, forgetting what it read since: after an
    /// aborted transaction those records must run again. Only a source
    /// that commits in transactions can.
    fn rewind(&mut self) -> Result<(), ConnectorError> {
        Err(ConnectorError::Config {
            message: "this source cannot go back to its last commit".into(),
        })
    }
}

/// A sink's transactions (exactly-once): everything sent since the last
/// commit, and the input offsets that produced it, become visible together
/// or not at all. The driver sends each partition's results in offset
/// order, acknowledges each record once its results are sent, and commits
/// or aborts from the sink's thread, between batches.
pub trait Transactions {
    /// Whether the open transaction must be given up (a rebalance is taking
    /// partitions away): the driver then calls `abort`.
    fn abort_requested(&self) -> bool;

    /// Commits what was sent since the last commit together with the
    /// offsets `acks` allows (`Acks::committable`), marks those committed,
    /// and opens the next transaction. Returns whether there was anything
    /// to commit: an empty transaction is not sent to the broker.
    fn commit(&mut self, acks: &Acks) -> Result<bool, TransactionError>;

    /// Gives up what was sent since the last commit (no reader ever sees
    /// it) and opens the next transaction. The source must then rewind.
    fn abort(&mut self) -> Result<(), ConnectorError>;
}

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// It was rolled back, or must be: abort, rewind, and go on.
    #[error("the transaction was aborted: {0}")]
    Abort(String),
    /// The producer cannot go on (another process took its transactional
    /// id, or the broker refuses for good).
    #[error(transparent)]
    Fatal(ConnectorError),
}

/// What a source says of itself, read by the metrics and health endpoints
/// from their own thread.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// The topic read, for the lag's labels.
    pub topic: String,
    /// Why the source is not consuming now, if it is not (joining a group,
    /// a rebalance, a restore), and since when.
    not_ready: Mutex<Option<(String, Instant)>>,
    /// Spells of not being ready, each counted when it begins: a probe of
    /// `/readyz` can miss a short one, this count does not.
    unready_spells: AtomicU64,
    /// Time spent not ready, over the spells that have ended.
    unready_for: Mutex<Duration>,
    /// Per partition, records between the committed offset and the end of
    /// the log, as last reported by the client.
    lag: Mutex<BTreeMap<i32, i64>>,
    /// Rebalances this member took part in (assignments and revocations).
    pub rebalances: AtomicU64,
    /// How long reading the records not yet handed out would take, in ms
    /// (see [`SourceStatus::behind`]).
    behind_ms: AtomicU64,
}

impl SourceStatus {
    /// The status of a source of `topic` that starts out not ready, for
    /// `reason`.
    pub fn starting(topic: &str, reason: &str) -> SourceStatus {
        let status = SourceStatus {
            topic: topic.to_owned(),
            ..SourceStatus::default()
        };
        status.set_not_ready(reason);
        status
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let mut not_ready = lock(&self.not_ready);
        let since = match &*not_ready {
            Some((_, since)) => *since,
            None => {
                self.unready_spells.fetch_add(1, Ordering::Relaxed);
                Instant::now()
            }
        };
        *not_ready = Some((reason.into(), since));
    }

    pub fn set_ready(&self) {
        if let Some((_, since)) = lock(&self.not_ready).take() {
            *lock(&self.unready_for) += since.elapsed();
        }
    }

    /// Whether the source is consuming; why not, if it is not.
    pub fn readiness(&self) -> Result<(), String> {
        match &*lock(&self.not_ready) {
            None => Ok(()),
            Some((reason, _)) => Err(reason.clone()),
        }
    }

    /// Spells of not being ready so far (the one under way included), and
    /// the time spent not ready (the spell under way included).
    pub fn unready(&self) -> (u64, Duration) {
        // The same lock order as `set_ready`: the spell, then the total.
        let not_ready = lock(&self.not_ready);
        let ended = *lock(&self.unready_for);
        let under_way = not_ready
            .as_ref()
            .map_or(Duration::ZERO, |(_, since)| since.elapsed());
        (
            self.unready_spells.load(Ordering::Relaxed),
            ended + under_way,
        )
    }

    pub fn set_lag(&self, lag: BTreeMap<i32, i64>) {
        *lock(&self.lag) = lag;
    }

    /// Partitions given away: no lag of theirs is this source's.
    pub fn forget_lag(&self, partitions: &[i32]) {
        lock(&self.lag).retain(|p, _| !partitions.contains(p));
    }

    /// Per partition, records behind the end of the log.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        lock(&self.lag).clone()
    }

    /// Says how far behind the source reads (see [`SourceStatus::behind`]),
    /// to the millisecond; `Duration::MAX` for a stall.
    pub fn set_behind(&self, behind: Duration) {
        let ms = u64::try_from(behind.as_millis()).unwrap_or(u64::MAX);
        self.behind_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the source would take to hand out the records already in
    /// its input and not handed out yet, at the rate it last handed them
    /// out: zero when it keeps up (or does not know yet), long when it is
    /// behind, and `Duration::MAX` when records waited while none were
    /// handed out. A source that measures nothing (the rdkafka source
    /// measures under exactly-once only) says zero.
    pub fn behind(&self) -> Duration {
        match self.behind_ms.load(Ordering::Relaxed) {
            u64::MAX => Duration::MAX,
            ms => Duration::from_millis(ms),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: a panic elsewhere while holding the lock leaves them
    // usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A committing source's offset tracker and its committer, which commits
/// from that same tracker.
pub struct Committing {
    pub acks: Arc<Acks>,
    pub committer: Box<dyn Committer>,
}

/// Makes acknowledged positions durable.
pub trait Committer: Send {
    /// Commits what its source's [`Acks`] allows (`Acks::committable`)
    /// and, on success, marks it committed. A commit that the broker
    /// refuses only because the partitions moved to another member is not
    /// an error: the offsets are simply not marked, and the partitions' new
    /// owner resumes from the last commit that did land. Returns whether
    /// offsets were committed.
    fn commit(&mut self) -> Result<bool, ConnectorError>;
}

/// Where results go.
pub trait Sink: Send {
    /// Queues one output record with its key: the input's, unless the job
    /// set one.
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError>;

    /// Queues a record that could not be processed, with the reason. The
    /// payload and key are the input's, byte for byte.
    fn dead_letter(
        &mut self,
        position: Position,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError>;

    /// Returns once every record queued so far is acknowledged by the
    /// destination. Only then may their positions be acknowledged.
    fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Whether dead letters go somewhere durable. When they do not, the
    /// driver logs and counts them instead.
    fn has_dead_letter_destination(&self) -> bool {
        false
    }

    /// The largest output (key and payload together) the destination
    /// takes, when it has a limit it knows of. A larger output would fail
    /// every attempt to write it, and the run with it: the driver
    /// dead-letters its record instead.
    fn output_limit(&self) -> Option<usize> {
        None
    }

    /// For a sink that writes in transactions: its transactions. The
    /// driver then runs exactly-once.
    fn transactions(&mut self) -> Option<&mut dyn Transactions> {
        None
    }

    /// Queues a record of one of the job's own topics (a keyed stage's
    /// changelog, or a repartition topic): to `topic`'s partition
    /// `partition`, or with `None` to the partition `key` hashes to; a
    /// `None` value is a tombstone (the key was deleted). It is flushed,
    /// and under exactly-once committed, with the outputs. Only a Kafka
    /// sink on the rdkafka client has such topics.
    fn send_to(
        &mut self,
        topic: &str,
        _partition: Option<i32>,
        _key: &[u8],
        _value: Option<&[u8]>,
    ) -> Result<(), ConnectorError> {
        Err(ConnectorError::Config {
            message: format!("this sink cannot write to the job's own topic {topic}"),
        })
    }
}

/// What a [`ChangelogReader`] hands a partition's records to.
pub trait Restore {
    /// Called once, before the first record: at most how many records
    /// follow (the partition's offsets from its first to its end; a
    /// compacted changelog holds fewer), so that the state can be sized
    /// once rather than grown step by step.
    fn expect(&mut self, records: u64);

    /// A record's key and value (`None` for a tombstone), in offset
    /// order.
    fn record(&mut self, key: &[u8], value: Option<&[u8]>);
}

/// Reads keyed stages' changelogs back, to restore their state.
pub trait ChangelogReader: Send {
    /// Hands `f` every committed record of `topic`'s partition
    /// `partition`, in offset order, from its start to the end it had
    /// when the call began. Returns how many it read.
    fn read(
        &mut self,
        topic: &str,
        partition: i32,
        f: &mut dyn Restore,
    ) -> Result<u64, ConnectorError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_spell_of_not_ready_is_counted_once_and_timed() {
        let status = SourceStatus::starting("t", "joining the consumer group");
        assert_eq!(status.unready().0, 1);
        // A new reason within the same spell is not a new spell.
        status.set_not_ready("a rebalance is taking partitions away");
        assert_eq!(status.unready().0, 1);
        std::thread::sleep(Duration::from_millis(20));
        status.set_ready();
        let (spells, first) = status.unready();
        assert_eq!(spells, 1);
        assert!(first >= Duration::from_millis(20), "{first:?}");
        // Ready time does not count; a second spell does, while under way.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(status.unready(), (1, first));
        status.set_not_ready("a rebalance is taking partitions away");
        assert_eq!(
            status.readiness(),
            Err("a rebalance is taking partitions away".into())
        );
        std::thread::sleep(Duration::from_millis(5));
        let (spells, so_far) = status.unready();
        assert_eq!(spells, 2);
        assert!(so_far >= first + Duration::from_millis(5), "{so_far:?}");
        status.set_ready();
        assert_eq!(status.readiness(), Ok(()));
    }
}
