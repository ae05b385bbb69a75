//! Kafka source and sink on librdkafka (the `rdkafka` crate), through its
//! synchronous API only: a `BaseConsumer` polled by the source's thread,
//! and a `BaseProducer` whose delivery callbacks run on a poll thread of
//! the writer's.
//!
//! # Group membership and revocation
//!
//! With [`Assignment::Group`] the source subscribes, and Kafka assigns the
//! partitions (KIP-848 where the broker offers it, cooperative-sticky
//! otherwise). librdkafka runs the rebalance callbacks on the thread that
//! polls, which is the source's. When partitions are revoked:
//!
//! 1. the callback waits, bounded by [`DRAIN_TIMEOUT`], until every record
//!    of those partitions that was handed out has been acknowledged (the
//!    workers and the sink's thread go on meanwhile: nothing they do
//!    needs the source's thread);
//! 2. it commits their acknowledged offsets, under the same lock as the
//!    commit thread's commits, so no commit of a partition can land after
//!    its release (it waits for that lock at most [`COMMIT_WAIT`]: a
//!    commit stuck on the group must not hold the group's rebalance);
//! 3. it releases them from [`Acks`]: a record that is still running after
//!    the bound finishes later and is ignored, and the new owner replays it
//!    from the last commit (a duplicate, never a loss);
//! 4. records of those partitions read ahead and not yet handed out are
//!    dropped, since the new owner reads them again.
//!
//! A lost assignment (the member was fenced or timed out) commits nothing:
//! another member owns those partitions already.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::dead_letter::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use super::{
    error, interleave, Assignment, BrokerVersions, Fetched, GroupProtocol, Outage, SinkConfig,
    SourceConfig, DEFAULT_RETRY_TIMEOUT,
};
use crate::{
    Acks, Committer, Committing, ConnectorError, Envelope, Polled, Position, Sink, Source,
};

/// How long a revocation waits for the revoked partitions' records to be
/// acknowledged: far inside the 300 s `max.poll.interval.ms` within which
/// a member must finish it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a revocation waits for a commit under way before it releases
/// the partitions anyway.
pub const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// How long metadata and offset look-ups may take before they fail.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Records one keep-alive takes from librdkafka at most.
const KEEP_ALIVE_TAKE: usize = 256;

/// How long one keep-alive waits for a record, serving the events queued
/// meanwhile. (librdkafka counts waits in whole milliseconds, and a wait
/// under one does not sleep.)
const KEEP_ALIVE_WAIT: Duration = Duration::from_millis(5);

/// How much longer than the retry timeout a flush waits for librdkafka's
/// last delivery report before it calls the producer stuck.
const FLUSH_SLACK: Duration = Duration::from_secs(30);

/// How long the producer's poll thread waits in one poll; it checks for
/// its stop this often.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Records the source takes from librdkafka's queue at once, to hand them
/// out round-robin over partitions.
const READ_AHEAD: usize = 4096;

fn kafka_error(brokers: &str, what: &str, e: KafkaError) -> ConnectorError {
    error(brokers, format!("{what}: {e}"))
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "fila")
        .set_log_level(RDKafkaLogLevel::Warning);
    // librdkafka's own debug log, for diagnosing a client: a list of its
    // debug contexts (`cgrp,fetch`, `all`), shown with FILA_LOG=debug.
    if let Ok(contexts) = std::env::var("FILA_RDKAFKA_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    config
}

/// Routes librdkafka's logs and errors to `tracing`. Client errors are
/// transient faults (librdkafka retries them itself; the fatal ones come
/// back from the calls that failed), so they go to the client's
/// [`Outage`], which says the first of a run once.
struct Logging {
    outage: Outage,
}

impl Logging {
    fn new(brokers: &str, retry_timeout: Duration) -> Logging {
        Logging {
            outage: Outage::new(brokers, retry_timeout),
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // A failed connection is also reported through `error`, which the
        // outage logs once per run; librdkafka would log it per attempt.
        if fac == "FAIL" {
            tracing::debug!(target: "librdkafka", fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A reader that asked to hear of partition ends hears of them
        // here too; they are no fault.
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        // Fatal errors come back from the call that failed, which says
        // more; they are no outage to retry.
        if fatal(&error) {
            tracing::debug!("{reason}: {error}");
            return;
        }
        self.outage.failed(&format_args!("{reason}: {error}"));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent at every step, so a panic
    // elsewhere while holding the lock leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the source, its rebalance callbacks and its committer share.
struct SourceContext {
    brokers: String,
    topic: String,
    acks: Arc<Acks>,
    /// Held across every commit, and across a revocation's commit and
    /// release, so no commit of a released partition lands after it. A
    /// revocation waits for it at most [`COMMIT_WAIT`] (see
    /// [`SourceContext::commit_guard`]).
    commit: parking_lot::Mutex<()>,
    /// Partitions revoked since the source last looked: their read-ahead
    /// records must be dropped.
    revoked: Mutex<Vec<i32>>,
    /// Set when partitions were assigned (and resumed) since the source
    /// last looked.
    assigned: AtomicBool,
    logging: Logging,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logging.error(error, reason)
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = self.partitions_of(tpl);
                if consumer.assignment_lost() {
                    tracing::warn!(
                        topic = %self.topic, ?partitions,
                        "partitions lost to another member: nothing of theirs is committed here"
                    );
                    let _guard = self.commit_guard();
                    self.acks.release(&partitions);
                } else {
                    self.revoke(consumer, &partitions);
                }
                lock(&self.revoked).extend(partitions);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(topic = %self.topic, "rebalance failed: {e}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = self.partitions_of(tpl);
            if !partitions.is_empty() {
                // librdkafka keeps a partition paused across a lost
                // assignment and its return. The source may have paused
                // it for its read-ahead and resumed the assignment while
                // it was empty: fetch the new partitions, and let the
                // source pause them again if its read-ahead is full.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(topic = %self.topic, "resuming assigned partitions failed: {e}");
                }
                self.assigned.store(true, Ordering::Release);
                tracing::info!(topic = %self.topic, ?partitions, "partitions assigned");
            }
        }
    }
}

impl SourceContext {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }

    /// The commit lock, for a revocation. librdkafka waits for the app's
    /// answer to a revocation before it goes on with the group, and a
    /// commit under way may wait on the group (its coordinator, say):
    /// waiting for the lock without a bound could hold both forever. Past
    /// [`COMMIT_WAIT`] the revocation goes on without it. A commit that
    /// lands after the release then carries only acknowledged offsets: at
    /// worst it moves the group's offset back, and the new owner reads
    /// some records twice. Nothing is lost.
    fn commit_guard(&self) -> Option<parking_lot::MutexGuard<'_, ()>> {
        let guard = self.commit.try_lock_for(COMMIT_WAIT);
        if guard.is_none() {
            tracing::warn!(
                topic = %self.topic,
                "a commit is still under way after {COMMIT_WAIT:?}; releasing partitions without \
                 waiting for it (their new owner may read some records twice)"
            );
        }
        guard
    }

    /// Drain, commit, release: see the module documentation.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let started = Instant::now();
        let drained = self.acks.wait_drained(partitions, DRAIN_TIMEOUT);
        let _guard = self.commit_guard();
        let offsets: Vec<(i32, i64)> = self
            .acks
            .committable()
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect();
        if !offsets.is_empty() {
            match commit_offsets(consumer, &self.topic, &offsets) {
                Ok(()) => self.acks.mark_committed(&offsets),
                Err(e) => tracing::warn!(
                    topic = %self.topic, ?partitions,
                    "committing revoked partitions failed ({e}); their new owner replays \
                     from the last commit"
                ),
            }
        }
        let left = self.acks.outstanding_in(partitions);
        self.acks.release(partitions);
        if drained {
            tracing::info!(
                topic = %self.topic, ?partitions, ?offsets, took = ?started.elapsed(),
                "partitions revoked: drained and committed"
            );
        } else {
            tracing::warn!(
                topic = %self.topic, ?partitions, left,
                "partitions revoked before their records drained (waited {DRAIN_TIMEOUT:?}); \
                 the new owner replays those"
            );
        }
    }
}

fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// Whether a failed commit only means the partitions moved to another
/// member (or are moving): not an error of this process.
fn moved_on(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            RebalanceInProgress
                | IllegalGeneration
                | UnknownMemberId
                | FencedInstanceId
                | StaleMemberEpoch
                | UnknownTopicOrPartition
                | State
                | AssignmentLost
                | NoOffset
        )
    )
}

/// Whether an error only says that a partition's leader is not known yet:
/// a topic just created, or a broker just back from a restart or a stall,
/// whose metadata the client has not caught up with.
fn leader_moving(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            NotLeaderForPartition | LeaderNotAvailable | UnknownTopicOrPartition | UnknownPartition
        )
    )
}

/// Whether retrying can never help.
fn fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Fatal
                | AutoOffsetReset
                | GroupAuthorizationFailed
                | TopicAuthorizationFailed
                | SaslAuthenticationFailed
                | InvalidGroupId
                | UnsupportedFeature
        )
    )
}

/// Reads the input topic as a group member or from a static assignment.
pub struct RdSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    /// Read-ahead per partition, handed out round-robin.
    buffered: BTreeMap<i32, VecDeque<Envelope>>,
    count: usize,
    /// The partition that handed out the last record.
    turn: i32,
    /// Whether fetching is paused because the read-ahead is full.
    paused: bool,
    /// When the source last asked the broker for metadata to learn
    /// whether it answers again.
    last_probe: Instant,
}

/// How often a source whose broker is failing asks whether it answers
/// again, when no record or commit says so.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl RdSource {
    pub fn connect(config: SourceConfig) -> Result<RdSource, ConnectorError> {
        let brokers = config.brokers.as_str();
        let versions = BrokerVersions::probe(brokers)?;
        let mut client = client_config(brokers);
        client
            .set("group.id", &config.group)
            // Offsets are committed by hand, and only what `Acks` allows.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Where a partition with no committed offset, or one out of
            // range, starts. librdkafka logs each reset as a warning.
            .set("auto.offset.reset", config.offset_reset.as_str())
            // A missing input topic is created, with the broker's default
            // partition count, as it would be by the first producer.
            .set("allow.auto.create.topics", "true")
            // Bound what librdkafka reads ahead of the window, and keep
            // each partition's block in a fetch small enough that
            // partitions interleave (see `READ_AHEAD`).
            .set("queued.max.messages.kbytes", "16384")
            .set("max.partition.fetch.bytes", "65536")
            .set("fetch.wait.max.ms", "100");
        let mut protocol = "static";
        if let Assignment::Group(wanted) = config.assignment {
            let consumer_protocol = match wanted {
                GroupProtocol::Consumer => true,
                GroupProtocol::Classic => false,
                GroupProtocol::Auto => versions.offers_consumer_protocol(),
            };
            if consumer_protocol {
                // KIP-848: the broker assigns; the assignor and session
                // settings are the group's, not the member's.
                client.set("group.protocol", "consumer");
                protocol = "consumer (KIP-848)";
            } else {
                client
                    .set("group.protocol", "classic")
                    .set("partition.assignment.strategy", "cooperative-sticky");
                protocol = "classic, cooperative-sticky";
            }
        }
        let context = SourceContext {
            brokers: config.brokers.clone(),
            topic: config.topic.clone(),
            acks: Arc::new(Acks::new()),
            commit: parking_lot::Mutex::new(()),
            revoked: Mutex::new(Vec::new()),
            assigned: AtomicBool::new(false),
            logging: Logging::new(brokers, config.retry_timeout),
        };
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(|e| kafka_error(brokers, "creating the consumer", e))?;
        let partitions = ensure_topic(consumer.client(), brokers, &config.topic)?;
        match config.assignment {
            Assignment::Group(_) => consumer
                .subscribe(&[&config.topic])
                .map_err(|e| kafka_error(brokers, "joining the group", e))?,
            Assignment::Static(replica) => {
                let mut tpl = TopicPartitionList::new();
                for &p in partitions.iter().filter(|&&p| replica.owns(p)) {
                    // Stored: the group's committed offset, or
                    // auto.offset.reset where none is.
                    tpl.add_partition_offset(&config.topic, p, Offset::Stored)
                        .map_err(|e| kafka_error(brokers, "assigning partitions", e))?;
                }
                if tpl.count() == 0 {
                    tracing::warn!(
                        topic = %config.topic, partitions = partitions.len(), ?replica,
                        "this replica owns no partition of the input topic; it will stay idle"
                    );
                }
                consumer
                    .assign(&tpl)
                    .map_err(|e| kafka_error(brokers, "assigning partitions", e))?;
            }
        }
        tracing::info!(topic = %config.topic, group = %config.group, protocol, "reading");
        Ok(RdSource {
            consumer: Arc::new(consumer),
            buffered: BTreeMap::new(),
            count: 0,
            turn: -1,
            paused: false,
            last_probe: Instant::now(),
        })
    }

    fn context(&self) -> &SourceContext {
        self.consumer.context()
    }

    /// Pauses or resumes fetching for the current assignment. librdkafka
    /// drops what it fetched for a paused partition and fetches it again
    /// after the last record it handed out, so nothing is lost.
    fn set_paused(&mut self, paused: bool) {
        let result = self.consumer.assignment().and_then(|tpl| {
            if paused {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            }
        });
        match result {
            Ok(()) => self.paused = paused,
            Err(e) => tracing::warn!("pausing or resuming the input failed: {e}"),
        }
    }

    /// Takes what librdkafka has, waiting up to `timeout` for the first,
    /// until `limit` records are buffered. Until a record comes, the
    /// events queued before it (logs, errors, rebalances) are all served:
    /// a poll that does not wait serves a single event, so polling only
    /// that way would let them pile up, the group's among them.
    fn fill(&mut self, timeout: Duration, limit: usize) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + timeout;
        let mut got_one = false;
        while self.count < limit {
            let wait = if got_one {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let Some(result) = self.consumer.poll(wait) else {
                // Nothing more, or an event served (a rebalance returns
                // early). A revocation's read-ahead goes before any record
                // read after it: those belong to the partition's next
                // assignment. Then go on while there is time to wait for a
                // record.
                self.forget_revoked();
                if got_one || Instant::now() >= deadline {
                    break;
                }
                continue;
            };
            // An error is no record: keep serving what is queued.
            got_one |= result.is_ok();
            match result {
                Ok(m) => {
                    self.context().logging.outage.succeeded();
                    let envelope = envelope_of(&m);
                    self.buffered
                        .entry(envelope.position.partition)
                        .or_default()
                        .push_back(envelope);
                    self.count += 1;
                }
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) => {
                    return Err(self.out_of_range());
                }
                Err(e) if fatal(&e) => {
                    return Err(kafka_error(
                        &self.context().brokers,
                        &format!("reading {}", self.context().topic),
                        e,
                    ))
                }
                Err(e) => self.context().logging.error(e, "reading the input topic"),
            }
        }
        Ok(())
    }

    /// The error for `--offset-reset error`, naming the partitions whose
    /// committed offset is missing or out of range (librdkafka's error
    /// does not say which).
    fn out_of_range(&self) -> ConnectorError {
        let context = self.context();
        let timeout = Duration::from_secs(5);
        let mut found = Vec::new();
        if let Ok(committed) = self.consumer.committed(timeout) {
            for e in committed.elements_for_topic(&context.topic) {
                let p = e.partition();
                let range = self.consumer.fetch_watermarks(&context.topic, p, timeout);
                match (e.offset(), range) {
                    (Offset::Offset(o), Ok((low, high))) if o < low || o > high => {
                        found.push(format!(
                            "partition {p}: committed offset {o} is out of range {low}..={high}"
                        ))
                    }
                    (Offset::Invalid, _) => {
                        found.push(format!("partition {p}: no committed offset"))
                    }
                    _ => {}
                }
            }
        }
        if found.is_empty() {
            found.push("a partition's committed offset is missing or out of range".into());
        }
        error(
            &context.brokers,
            format!(
                "{} of {}, and --offset-reset is error",
                found.join("; "),
                context.topic
            ),
        )
    }

    /// While the broker is failing: learns whether it answers again (an
    /// idle topic brings no record to say so), and fails once the failures
    /// have lasted past the retry timeout.
    fn watch_outage(&mut self) -> Result<(), ConnectorError> {
        let context = self.consumer.context();
        if !context.logging.outage.is_failing() {
            return Ok(());
        }
        if self.last_probe.elapsed() >= PROBE_INTERVAL {
            self.last_probe = Instant::now();
            if self
                .consumer
                .fetch_metadata(Some(&context.topic), PROBE_INTERVAL)
                .is_ok()
            {
                context.logging.outage.succeeded();
            }
        }
        context.logging.outage.check()
    }

    /// Drops the read-ahead of partitions revoked during the last poll,
    /// and learns of partitions assigned (unpaused) during it.
    fn forget_revoked(&mut self) {
        // Acquire: pairs with the callback's store; both run on this
        // thread in fact, inside the consumer's poll.
        let assigned = self.context().assigned.swap(false, Ordering::Acquire);
        let revoked = std::mem::take(&mut *lock(&self.context().revoked));
        for p in revoked {
            if let Some(q) = self.buffered.remove(&p) {
                self.count -= q.len();
            }
        }
        // The assignment callback resumed only the new partitions. While
        // the read-ahead is paused, pause them too, so that the whole
        // assignment resumes together once the read-ahead drains.
        if assigned && self.paused {
            self.set_paused(true);
        }
    }

    /// The next record, one partition after the other.
    fn next_round_robin(&mut self) -> Option<Envelope> {
        let next = self
            .buffered
            .range(self.turn + 1..)
            .chain(self.buffered.range(..=self.turn))
            .find(|(_, q)| !q.is_empty())
            .map(|(&p, _)| p)?;
        self.turn = next;
        self.count -= 1;
        self.buffered.get_mut(&next)?.pop_front()
    }
}

fn envelope_of(m: &BorrowedMessage<'_>) -> Envelope {
    Envelope {
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers: m.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        }),
        timestamp: m.timestamp().to_millis(),
        position: Position {
            partition: m.partition(),
            offset: m.offset(),
        },
        arrived: Instant::now(),
    }
}

impl Source for RdSource {
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError> {
        if self.count == 0 {
            self.fill(timeout, READ_AHEAD)?;
            // Revocations run only inside the consumer's poll, in `fill`.
            self.forget_revoked();
            self.watch_outage()?;
        }
        let next = self.next_round_robin();
        if self.paused && self.count < READ_AHEAD / 2 {
            self.set_paused(false);
        }
        Ok(next.map_or(Polled::Idle, Polled::Record))
    }

    /// Polls without handing anything out. A classic group's rebalance
    /// completes only inside a poll, and it refuses commits until then: a
    /// source that stopped polling while the uncommitted bound is full
    /// would wait for itself. Records that arrive meanwhile are kept; past
    /// the read-ahead, the partitions are paused so the buffer stays
    /// bounded.
    fn keep_alive(&mut self) -> Result<(), ConnectorError> {
        if self.count >= READ_AHEAD && !self.paused {
            self.set_paused(true);
        }
        // At least one poll, whatever is buffered: that is what serves
        // the group's events.
        let limit = self.count + KEEP_ALIVE_TAKE;
        self.fill(KEEP_ALIVE_WAIT, limit)?;
        self.forget_revoked();
        self.watch_outage()
    }

    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(Some(Committing {
            acks: self.context().acks.clone(),
            committer: Box::new(RdCommitter {
                consumer: self.consumer.clone(),
                refused_since: None,
            }),
        }))
    }
}

struct RdCommitter {
    consumer: Arc<BaseConsumer<SourceContext>>,
    /// When the group began refusing this member's commits, and whether
    /// that was said.
    refused_since: Option<(Instant, bool)>,
}

/// How long the group may refuse commits (a rebalance, a fenced member
/// rejoining) before fila says so.
const REFUSED_WARN: Duration = Duration::from_secs(10);

impl Committer for RdCommitter {
    fn commit(&mut self) -> Result<(), ConnectorError> {
        let context = self.consumer.context();
        let acks = &context.acks;
        let _guard = context.commit.lock();
        let offsets = acks.committable();
        if offsets.is_empty() {
            return Ok(());
        }
        match commit_offsets(&self.consumer, &context.topic, &offsets) {
            Ok(()) => {
                context.logging.outage.succeeded();
                if let Some((since, true)) = self.refused_since {
                    tracing::info!("commits accepted again after {:.1?}", since.elapsed());
                }
                self.refused_since = None;
                acks.mark_committed(&offsets);
                Ok(())
            }
            Err(e) if moved_on(&e) => {
                tracing::debug!("commit refused while partitions move ({e}); offered again later");
                let (since, said) = self.refused_since.get_or_insert((Instant::now(), false));
                if !*said && since.elapsed() >= REFUSED_WARN {
                    *said = true;
                    tracing::warn!(
                        "the group has refused this member's commits for {:.1?} ({e}); \
                         reading waits until it assigns partitions again",
                        since.elapsed()
                    );
                }
                Ok(())
            }
            Err(e) if fatal(&e) => Err(kafka_error(&context.brokers, "committing offsets", e)),
            Err(e) => {
                // The broker is away or busy: the offsets stay committable,
                // and the next commit carries them. The uncommitted bound
                // holds the source back meanwhile.
                context.logging.error(e, "committing offsets");
                Ok(())
            }
        }
    }
}

/// The partitions of `topic`, asking the broker to create it (with its
/// default partition count) if it does not exist yet.
fn ensure_topic<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>, ConnectorError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    if t.error().is_none() && !ids.is_empty() {
                        ids.sort_unstable();
                        return Ok(ids);
                    }
                    last = match t.error() {
                        Some(e) => format!("{:?}", RDKafkaErrorCode::from(e)),
                        None => "no partitions yet".into(),
                    };
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(error(
        brokers,
        format!(
            "topic {topic} does not exist and was not created within {LOOKUP_TIMEOUT:?} \
             (is auto.create.topics.enable off?): {last}"
        ),
    ))
}

/// Counts the records sent and not yet reported delivered (or failed),
/// and keeps the first failure. librdkafka's delivery callbacks run on the
/// writer's poll thread.
struct DeliveryContext {
    pending: Mutex<u64>,
    /// Notified when `pending` reaches zero.
    settled: Condvar,
    failed: Mutex<Option<String>>,
    /// Set once the idempotent producer has its producer id, as its
    /// statistics say (when they are turned on).
    ready: Mutex<bool>,
    /// Notified when `ready` is set.
    readied: Condvar,
    logging: Logging,
}

impl DeliveryContext {
    fn new(brokers: &str, retry_timeout: Duration) -> DeliveryContext {
        DeliveryContext {
            pending: Mutex::new(0),
            settled: Condvar::new(),
            failed: Mutex::new(None),
            ready: Mutex::new(false),
            readied: Condvar::new(),
            logging: Logging::new(brokers, retry_timeout),
        }
    }

    /// Waits until the producer has its producer id, or `timeout` passes.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let ready = lock(&self.ready);
        let (ready, _) = self
            .readied
            .wait_timeout_while(ready, timeout, |r| !*r)
            .unwrap_or_else(|p| p.into_inner());
        *ready
    }

    fn settle_one(&self) {
        let mut pending = lock(&self.pending);
        *pending -= 1;
        if *pending == 0 {
            self.settled.notify_all();
        }
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics
            .eos
            .is_some_and(|eos| eos.idemp_state == "Assigned")
        {
            *lock(&self.ready) = true;
            self.readied.notify_all();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logging.error(error, reason)
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.logging.outage.succeeded();
        }
        if let Err((e, m)) = result {
            let mut failed = lock(&self.failed);
            if failed.is_none() {
                *failed = Some(format!(
                    "producing to {} partition {}: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
        // After the failure is recorded, so a flush that wakes sees it.
        self.settle_one();
    }
}

/// The largest record fila produces: above the broker's default limit
/// (1 MiB), so a record the broker accepted on the input can go to the
/// dead-letter topic with its headers; the broker's own limit decides.
const MAX_RECORD_BYTES: usize = 8 << 20;

/// A producer that waits for every replica (`acks=all`) and never writes
/// a record twice on a retry (idempotence). librdkafka retries a record
/// through broker restarts for up to `retry_timeout`, then reports it
/// failed.
fn producer(
    brokers: &str,
    linger_ms: u32,
    retry_timeout: Duration,
    stats_every: Option<Duration>,
) -> Result<BaseProducer<DeliveryContext>, ConnectorError> {
    BrokerVersions::probe(brokers)?;
    let mut config = client_config(brokers);
    if let Some(every) = stats_every {
        config.set("statistics.interval.ms", every.as_millis().to_string());
    }
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", retry_timeout.as_millis().to_string())
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .create_with_context(DeliveryContext::new(brokers, retry_timeout))
        .map_err(|e| kafka_error(brokers, "creating the producer", e))
}

/// A producer with a thread of its own that serves librdkafka's delivery
/// reports as they come, so a flush sleeps until the last one instead of
/// polling. (`Producer::flush` waits in steps of 100 ms, and a poll with a
/// timeout under a millisecond spins.)
struct Writer {
    producer: Arc<BaseProducer<DeliveryContext>>,
    brokers: String,
    /// How long a flush waits for the last delivery report: librdkafka
    /// reports every record by then (`message.timeout.ms` is the retry
    /// timeout), so a wait past it means the client is stuck.
    flush_bound: Duration,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn new(
        producer: BaseProducer<DeliveryContext>,
        brokers: &str,
        retry_timeout: Duration,
    ) -> Writer {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fila-produce".into())
                .spawn(move || {
                    // Relaxed: the flag only ends the loop; nothing is
                    // published through it.
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_INTERVAL);
                    }
                })
                .expect("spawning the producer's poll thread")
        };
        Writer {
            producer,
            brokers: brokers.to_owned(),
            flush_bound: retry_timeout + FLUSH_SLACK,
            stop,
            poller: Some(poller),
        }
    }

    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) -> Result<(), ConnectorError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let context = self.producer.context();
        // Counted before the send: its delivery report may come first.
        *lock(&context.pending) += 1;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: the poll thread frees room
                    // as reports come in.
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    context.settle_one();
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("producing to {topic}"),
                        e,
                    ));
                }
            }
        }
    }

    /// Returns once everything sent is acknowledged, or the first failure.
    /// librdkafka reports a record failed after `message.timeout.ms` (the
    /// retry timeout) of retries; if no report comes for longer than that,
    /// the flush fails rather than wait for ever.
    fn flush(&self) -> Result<(), ConnectorError> {
        let context = self.producer.context();
        let pending = lock(&context.pending);
        let (pending, _) = context
            .settled
            .wait_timeout_while(pending, self.flush_bound, |p| *p > 0)
            .unwrap_or_else(|p| p.into_inner());
        let left = *pending;
        drop(pending);
        if left > 0 {
            return Err(error(
                &self.brokers,
                format!(
                    "{left} records were neither acknowledged nor reported failed within {:?}",
                    self.flush_bound
                ),
            ));
        }
        match lock(&context.failed).take() {
            Some(failure) => Err(error(&self.brokers, failure)),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping a producer purges what it still holds: say so if
        // anything was left, rather than lose it silently.
        let context = self.producer.context();
        let pending = lock(&context.pending);
        let (pending, _) = context
            .settled
            .wait_timeout_while(pending, Duration::from_secs(30), |p| *p > 0)
            .unwrap_or_else(|p| p.into_inner());
        let left = *pending;
        drop(pending);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        if left > 0 {
            tracing::error!(
                brokers = %self.brokers,
                "{left} records were not acknowledged when the producer closed"
            );
        }
    }
}

/// The pipeline's sink: outputs keep their input's key; a dead letter is
/// the input's bytes unchanged, with its position and the reason in
/// headers.
pub struct RdSink {
    writer: Writer,
    input_topic: String,
    output_topic: String,
    dlq_topic: Option<String>,
}

impl RdSink {
    pub fn connect(config: &SinkConfig) -> Result<RdSink, ConnectorError> {
        let brokers = config.brokers.as_str();
        // The sink flushes after every batch, which sends at once; linger
        // only gathers what arrives while a flush is under way.
        let producer = producer(brokers, 1, config.retry_timeout, None)?;
        for topic in std::iter::once(&config.output_topic).chain(&config.dlq_topic) {
            ensure_topic(producer.client(), brokers, topic)?;
        }
        Ok(RdSink {
            writer: Writer::new(producer, brokers, config.retry_timeout),
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
        })
    }
}

impl Sink for RdSink {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.writer
            .send(&self.output_topic, key, payload, None, None)
    }

    fn dead_letter(
        &mut self,
        position: Position,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let topic = self.dlq_topic.as_deref().unwrap_or(&self.output_topic);
        let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
        let headers = [
            (DLQ_TOPIC_HEADER, self.input_topic.as_bytes()),
            (DLQ_PARTITION_HEADER, partition.as_bytes()),
            (DLQ_OFFSET_HEADER, offset.as_bytes()),
            (DLQ_REASON_HEADER, reason.as_bytes()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(4), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        self.writer.send(topic, key, payload, Some(headers), None)
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.writer.flush()
    }

    fn has_dead_letter_destination(&self) -> bool {
        self.dlq_topic.is_some()
    }
}

/// How often the load client's and the tests' producer reports its
/// statistics: how it learns that it has its producer id.
const READY_STATS: Duration = Duration::from_millis(100);

/// How long the load client's and the tests' writer retries a record
/// before it reports the failure: they are tools, and should fail fast.
const TOOL_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes values to topics for the load client and tests. Records without
/// a key go to the topic's partitions in turn, so a burst is spread evenly
/// (librdkafka's default would put everything sent within a few
/// milliseconds on one partition).
pub struct TopicWriter {
    writer: Writer,
    partitions: BTreeMap<String, i32>,
    turn: u64,
}

impl TopicWriter {
    pub fn connect(brokers: &str, topics: &[&str]) -> Result<TopicWriter, ConnectorError> {
        // A burst is sent as fast as possible: a few ms of linger fills
        // batches without delaying the records noticeably.
        let producer = producer(brokers, 5, TOOL_RETRY_TIMEOUT, Some(READY_STATS))?;
        let mut partitions = BTreeMap::new();
        for &topic in topics {
            let ids = ensure_topic(producer.client(), brokers, topic)?;
            partitions.insert(topic.to_owned(), ids.len() as i32);
        }
        // The writer's poll thread serves the statistics that say when the
        // producer is ready.
        let writer = Writer::new(producer, brokers, TOOL_RETRY_TIMEOUT);
        // An idempotent producer sends nothing before it has its producer
        // id, and when it asks before its first connection is up it asks
        // again only after a backoff: wait for it here, so that the first
        // records sent are not held back. (It sends anyway if the wait
        // runs out.)
        if !writer.producer.context().wait_ready(LOOKUP_TIMEOUT) {
            tracing::warn!(
                brokers,
                "the producer has no producer id yet; sending anyway"
            );
        }
        Ok(TopicWriter {
            writer,
            partitions,
            turn: 0,
        })
    }

    pub fn send_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>, &'a [u8])>,
    ) -> Result<(), ConnectorError> {
        for (topic, key, value) in records {
            let partition = match (key, self.partitions.get(topic)) {
                (None, Some(&n)) if n > 0 => {
                    self.turn += 1;
                    Some((self.turn % n as u64) as i32)
                }
                _ => None,
            };
            self.writer.send(topic, key, value, None, partition)?;
        }
        self.writer.flush()
    }
}

struct ReaderContext {
    logging: Logging,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logging.error(error, reason)
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads given partitions from given offsets, outside any group.
pub struct TopicReader {
    consumer: BaseConsumer<ReaderContext>,
    brokers: String,
    topic: String,
    partitions: usize,
    /// Records read by `wait_caught_up`, for the next `fetch`.
    early: Vec<Fetched>,
}

fn fetched_of(m: &BorrowedMessage<'_>) -> Fetched {
    let e = envelope_of(m);
    Fetched {
        position: e.position,
        key: e.key,
        payload: e.payload,
        headers: e.headers,
    }
}

fn reader(brokers: &str) -> Result<BaseConsumer<ReaderContext>, ConnectorError> {
    BrokerVersions::probe(brokers)?;
    // librdkafka wants a group even for a plain assignment; this one never
    // joins, and commits nothing.
    let group = format!("fila-reader-{}", std::process::id());
    client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        // Says when a partition has been read to its end: how
        // `wait_caught_up` knows the reader is fetching.
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext {
            logging: Logging::new(brokers, DEFAULT_RETRY_TIMEOUT),
        })
        .map_err(|e| kafka_error(brokers, "creating the consumer", e))
}

impl TopicReader {
    pub fn new(
        brokers: &str,
        topic: &str,
        start: BTreeMap<i32, i64>,
    ) -> Result<TopicReader, ConnectorError> {
        let consumer = reader(brokers)?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in start {
            tpl.add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(|e| kafka_error(brokers, "assigning partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error(brokers, &format!("reading {topic}"), e))?;
        Ok(TopicReader {
            consumer,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions: tpl.count(),
            early: Vec::new(),
        })
    }

    /// Waits until every partition has been read to its end once, or
    /// `timeout` passes, keeping what arrived meanwhile for `fetch`. A
    /// consumer just assigned looks up its partitions' leaders and checks
    /// its offsets before it fetches anything, which takes a while.
    pub fn wait_caught_up(&mut self, timeout: Duration) -> Result<bool, ConnectorError> {
        let deadline = Instant::now() + timeout;
        let mut at_end = std::collections::BTreeSet::new();
        while at_end.len() < self.partitions && Instant::now() < deadline {
            let Some(result) = self.consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            match result {
                Ok(m) => self.early.push(fetched_of(&m)),
                Err(KafkaError::PartitionEOF(p)) => {
                    at_end.insert(p);
                }
                Err(e) if fatal(&e) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("reading {}", self.topic),
                        e,
                    ))
                }
                Err(e) => self.consumer.context().logging.error(e, "reading a topic"),
            }
        }
        Ok(at_end.len() >= self.partitions)
    }

    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        let mut per_partition: BTreeMap<i32, Vec<Fetched>> = BTreeMap::new();
        for f in self.early.drain(..) {
            per_partition
                .entry(f.position.partition)
                .or_default()
                .push(f);
        }
        let mut wait = Duration::from_millis(100);
        let mut count = 0;
        while count < 10_000 {
            let Some(result) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match result {
                Ok(m) => {
                    count += 1;
                    let f = fetched_of(&m);
                    per_partition
                        .entry(f.position.partition)
                        .or_default()
                        .push(f);
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) if fatal(&e) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("reading {}", self.topic),
                        e,
                    ))
                }
                Err(e) => self.consumer.context().logging.error(e, "reading a topic"),
            }
        }
        Ok(interleave(per_partition.into_values().collect()))
    }
}

/// The end offset of every partition of `topic`, creating it if needed.
pub fn end_offsets(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    let producer = producer(brokers, 0, DEFAULT_RETRY_TIMEOUT, None)?;
    let partitions = ensure_topic(producer.client(), brokers, topic)?;
    let mut out = BTreeMap::new();
    // A topic just created may not have its leaders settled yet, and a
    // broker just back from a stall may not lead its partitions again yet:
    // it answers NotLeaderForPartition, or the client's metadata knows no
    // leader, for a moment. Retry in short attempts, bounded.
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    for p in partitions {
        let high = loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), Duration::from_secs(2));
            match producer.client().fetch_watermarks(topic, p, attempt) {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() < deadline && leader_moving(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(kafka_error(
                        brokers,
                        &format!("listing offsets of {topic}"),
                        e,
                    ))
                }
            }
        };
        out.insert(p, high);
    }
    Ok(out)
}

/// Creates `topic` with `partitions` partitions and replication factor 1.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), ConnectorError> {
    BrokerVersions::probe(brokers)?;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| kafka_error(brokers, "creating an admin client", e))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(LOOKUP_TIMEOUT));
    let results = wait_for(admin.create_topics([&new], &options))
        .map_err(|e| kafka_error(brokers, &format!("creating topic {topic}"), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(error(brokers, format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Sets group `group`'s committed offsets of `topic`, outside any group
/// membership: for an operator moving a group that is not running, and
/// for tests.
pub fn commit_group_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), ConnectorError> {
    BrokerVersions::probe(brokers)?;
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kafka_error(brokers, "creating the consumer", e))?;
    commit_offsets(&consumer, topic, offsets)
        .map_err(|e| kafka_error(brokers, &format!("committing offsets of group {group}"), e))
}

/// Blocks the calling thread until `future` is ready. The admin client's
/// answers come from its own thread through a one-shot channel; this is a
/// plain wait for one of them, not a task executor.
fn wait_for<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
