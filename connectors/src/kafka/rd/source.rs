//! The source: reads the input topic as a group member or from a static
//! assignment, and answers the group's rebalances.
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::admin::ensure_topic;
use super::commit::{commit_bounded, RdCommitter};
use super::config::{client_config, fatal, kafka_error, preflight, Defaults, Logging, Rebootstrap};
use super::lock;
use super::purge::Purge;
use super::transaction::{Link, TRANSACTION_TIMEOUT};
use crate::bounded::BoundedCall;
use crate::kafka::{error, Assignment, GroupProtocol, SourceConfig};
use crate::{Acks, Committing, ConnectorError, Envelope, Polled, Position, Source, SourceStatus};

/// How long a revocation waits for the revoked partitions' records to be
/// acknowledged: far inside the 300 s `max.poll.interval.ms` within which
/// a member must finish it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a revocation waits for a commit under way before it releases
/// the partitions anyway.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// How long one ask for the group's committed offsets may take, before a
/// rewind under exactly-once (the broker holds the answer back while a
/// transaction's offsets are pending).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// Records one keep-alive takes from librdkafka at most.
const KEEP_ALIVE_TAKE: usize = 256;

/// How long one keep-alive waits for a record, serving the events queued
/// meanwhile. (librdkafka counts waits in whole milliseconds, and a wait
/// under one does not sleep.)
const KEEP_ALIVE_WAIT: Duration = Duration::from_millis(5);

/// Records the source takes from librdkafka's queue at once, to hand them
/// out round-robin over partitions.
const READ_AHEAD: usize = 4096;

/// What the source, its rebalance callbacks and its committer share.
pub(super) struct SourceContext {
    pub(super) brokers: String,
    pub(super) topic: String,
    pub(super) acks: Arc<Acks>,
    /// Held across every commit, and across a revocation's commit and
    /// release, so no commit of a released partition lands after it. A
    /// revocation waits for it at most [`COMMIT_WAIT`] (see
    /// [`SourceContext::commit_guard`]).
    /// The thread commits are made on, so that each is waited for with a
    /// bound ([`COMMIT_TIMEOUT`]).
    pub(super) commit: parking_lot::Mutex<BoundedCall<KafkaResult<()>>>,
    /// Partitions revoked since the source last looked: their read-ahead
    /// records must be dropped.
    revoked: Mutex<Vec<i32>>,
    /// Set when partitions were assigned (and resumed) since the source
    /// last looked.
    assigned: AtomicBool,
    /// Set when librdkafka could not fetch the committed offsets of the
    /// assignment (the group coordinator moving or still loading, on a
    /// broker just started): librdkafka then leaves those partitions
    /// unstarted until they are assigned again, which the source does
    /// ([`RdSource::refetch_offsets`]).
    offsets_unfetched: AtomicBool,
    /// The partitions of the input that librdkafka's statistics showed
    /// not fetching since the committed offsets last failed to be fetched.
    unstarted: Mutex<Unstarted>,
    pub(super) logging: Logging,
    /// Exactly-once: what the source shares with the sink's transactions.
    eos: Option<Arc<Link>>,
    /// Readiness, lag and rebalances, for the metrics and health endpoints.
    pub(super) status: Arc<SourceStatus>,
    /// The consumer itself, for the thread commits are made on (set once
    /// it is made; weak, as the consumer owns this context).
    pub(super) consumer: OnceLock<Weak<BaseConsumer<SourceContext>>>,
    /// A repartition topic's: deletes what this source committed.
    purge: Option<Purge>,
}

/// The partitions that every statistics report since a failed fetch of
/// committed offsets showed not fetching, and how many reports that was.
/// One report can be a second old: a partition it shows unstarted may have
/// started since, and two in a row say it did not.
#[derive(Debug, Default)]
struct Unstarted {
    reports: u32,
    partitions: BTreeSet<i32>,
}

impl Unstarted {
    fn report(&mut self, not_fetching: BTreeSet<i32>) {
        self.partitions = if self.reports == 0 {
            not_fetching
        } else {
            self.partitions
                .intersection(&not_fetching)
                .copied()
                .collect()
        };
        self.reports = self.reports.saturating_add(1);
    }

    /// The partitions left unstarted, once two reports say so.
    fn settled(&self) -> Option<BTreeSet<i32>> {
        (self.reports >= 2).then(|| self.partitions.clone())
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    /// Consumer lag per partition: records from the committed offset to
    /// the end of what a reader may read (the last stable offset when
    /// reading committed). The committed offset is the tracker's where it
    /// knows the partition (transactions commit offsets the client does not
    /// see), the client's otherwise. And the partitions not fetching, for
    /// [`RdSource::refetch_offsets`].
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let committed = self.acks.committed_offsets();
        let mut lag = BTreeMap::new();
        let mut not_fetching = BTreeSet::new();
        for (&p, part) in &topic.partitions {
            if p >= 0 && matches!(part.fetch_state.as_str(), "none" | "stopped") {
                not_fetching.insert(p);
            }
            // Only partitions this member reads: librdkafka lists every
            // partition of the topic, and one given away is stopped.
            if p < 0 || matches!(part.fetch_state.as_str(), "none" | "stopping" | "stopped") {
                continue;
            }
            let end = if part.ls_offset >= 0 {
                part.ls_offset
            } else {
                part.hi_offset
            };
            let from = committed
                .get(&p)
                .copied()
                .or((part.committed_offset >= 0).then_some(part.committed_offset));
            if let (Some(from), true) = (from, end >= 0) {
                lag.insert(p, (end - from).max(0));
            }
        }
        self.status.set_lag(lag);
        lock(&self.unstarted).report(not_fetching);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if reason.starts_with("Failed to fetch committed offset") {
            self.offsets_unfetched.store(true, Ordering::Release);
            // Which partitions it left unstarted, the next statistics say.
            *lock(&self.unstarted) = Unstarted::default();
        }
        self.logging.error(error, reason)
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.status.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.status
                    .set_not_ready("a rebalance is taking partitions away");
                let partitions = self.partitions_of(tpl);
                self.status.forget_lag(&partitions);
                if let Some(link) = &self.eos {
                    // The open transaction may hold outputs of these
                    // partitions past their last commit: it is aborted
                    // before they go, and the new owner reads them again.
                    // Nothing admitted before the abort is acked, whether
                    // the abort came in time or comes later: the sink
                    // aborts before it commits again, and drops the
                    // results of what was admitted before. Waiting for
                    // their acks would leave these records outstanding for
                    // good if the partitions came back here.
                    if !link.abort_and_wait() {
                        tracing::warn!(
                            topic = %self.topic, ?partitions,
                            "the sink did not abort its transaction in time; releasing anyway \
                             (it aborts before it commits again)"
                        );
                    }
                    self.acks.release_aborted(&partitions);
                    tracing::info!(
                        topic = %self.topic, ?partitions,
                        "partitions revoked: any transaction left open was given up"
                    );
                } else if consumer.assignment_lost() {
                    tracing::warn!(
                        topic = %self.topic, ?partitions,
                        "partitions lost to another member: nothing of theirs is committed here"
                    );
                    let _guard = self.commit_guard();
                    self.acks.release(&partitions);
                } else {
                    self.revoke(&partitions);
                }
                lock(&self.revoked).extend(partitions);
                self.status.set_ready();
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(topic = %self.topic, "rebalance failed: {e}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // A member of the group, with its share (which may be none).
            self.status.set_ready();
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
    /// Records that `offsets` of the topic were committed: in the offset
    /// tracker, and for the purge of a repartition topic.
    pub(super) fn mark_committed(&self, offsets: &[(i32, i64)]) {
        self.acks.mark_committed(offsets);
        self.purge_below(offsets);
    }

    /// A repartition topic's: its records before `offsets`, just
    /// committed, may be deleted.
    pub(super) fn purge_below(&self, offsets: &[(i32, i64)]) {
        if let Some(purge) = &self.purge {
            purge.committed(offsets);
        }
    }

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
    fn commit_guard(&self) -> Option<parking_lot::MutexGuard<'_, BoundedCall<KafkaResult<()>>>> {
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
    fn revoke(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let started = Instant::now();
        let drained = self.acks.wait_drained(partitions, DRAIN_TIMEOUT);
        // Held until the release below.
        let mut guard = self.commit_guard();
        let offsets: Vec<(i32, i64)> = self
            .acks
            .committable()
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect();
        // Nothing to commit counts as committed. While the consumer closes
        // (its last handle dropped) there is none to commit with: the run's
        // final commit came before.
        let mut committed = offsets.is_empty();
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        if let (Some(calls), Some(consumer), false) = (guard.as_mut(), consumer, committed) {
            let answer = commit_bounded(&consumer, calls, &offsets)
                .map_err(|unanswered| unanswered.to_string())
                .and_then(|answer| answer.map_err(|e| e.to_string()));
            match answer {
                Ok(()) => {
                    self.mark_committed(&offsets);
                    committed = true;
                }
                Err(e) => tracing::warn!(
                    topic = %self.topic, ?partitions,
                    "committing revoked partitions failed ({e}); their new owner replays \
                     from the last commit"
                ),
            }
        }
        let left = self.acks.outstanding_in(partitions);
        self.acks.release(partitions);
        drop(guard);
        if drained && committed {
            tracing::info!(
                topic = %self.topic, ?partitions, ?offsets, took = ?started.elapsed(),
                "partitions revoked: drained and committed"
            );
        } else if drained {
            tracing::info!(
                topic = %self.topic, ?partitions, ?offsets, took = ?started.elapsed(),
                "partitions revoked: drained; these offsets were not committed here, and \
                 the last commit stands"
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

/// Reads the input topic as a group member or from a static assignment.
pub(crate) struct RdSource {
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
    /// Gives the client its bootstrap servers again in a long outage.
    rebootstrap: Rebootstrap,
    transactional_id: String,
    /// When partitions were last assigned again because their committed
    /// offsets could not be fetched ([`RdSource::refetch_offsets`]).
    reassigned: Option<Instant>,
    /// When that was last logged as a warning.
    reassign_warned: Option<Instant>,
    /// Partitions whose first record since they were assigned was checked
    /// against the group's committed offset ([`RdSource::check_start`]).
    checked: BTreeSet<i32>,
    /// Committed offsets of assigned partitions not checked yet, learned
    /// with another partition's: one request asks for all of them.
    committed: BTreeMap<i32, Offset>,
    /// Whether the source looks how far behind it reads (only the
    /// exactly-once sink asks), the polls since it last looked, and when
    /// that was, with the records handed out by then
    /// ([`RdSource::look_behind`]).
    measure_behind: bool,
    polls: u32,
    looked: (Instant, u64),
}

/// How often, at most, the source looks how far behind it reads: a rate
/// over a shorter span would swing with each record's cost.
const LOOK_BEHIND_EVERY: Duration = Duration::from_millis(250);

/// Polls between two looks at the clock for [`LOOK_BEHIND_EVERY`], so
/// that handing out a record costs no clock read of its own.
const LOOK_BEHIND_POLLS: u32 = 16;

/// How long [`RdSource::check_start`] waits at least for a partition's
/// committed offset while an open transaction holds it: well past the time
/// fila's transactions may stay open, after which the broker aborts them.
/// It waits as long as the retry timeout if that is longer, as for any
/// other broker fault, but at most [`START_CHECK_CAP`].
const START_CHECK_BOUND: Duration = Duration::from_secs(3 * TRANSACTION_TIMEOUT.as_secs());

/// The longest [`RdSource::check_start`] keeps asking, whatever the retry
/// timeout (its last ask may take [`COMMITTED_TIMEOUT`] more): it does not
/// poll the consumer meanwhile, so it serves no rebalance and no stop, and
/// it must end well inside `max.poll.interval.ms` (300 s by default).
const START_CHECK_CAP: Duration = Duration::from_secs(120);

/// How often a source whose broker is failing asks whether it answers
/// again, when no record or commit says so.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often assigning partitions again is logged as a warning while the
/// coordinator keeps refusing their offsets; at debug level in between.
const REASSIGN_WARN_EVERY: Duration = Duration::from_secs(30);

impl RdSource {
    pub fn connect(config: SourceConfig) -> Result<RdSource, ConnectorError> {
        RdSource::connect_with(config, None)
    }

    /// The source; with `eos`, one that reads committed records only and
    /// whose offsets go into the sink's transactions.
    pub(super) fn connect_with(
        config: SourceConfig,
        eos: Option<Arc<Link>>,
    ) -> Result<RdSource, ConnectorError> {
        let brokers = config.cluster.brokers.as_str();
        let versions = preflight(&config.cluster)?;
        let mut client = client_config(&config.cluster)?;
        if eos.is_some() {
            // An input written in transactions is read as committed.
            client.set("isolation.level", "read_committed");
        }
        client
            // A missing input topic is created, with the broker's default
            // partition count, as it would be by the first producer.
            .default_to("allow.auto.create.topics", "true")
            // Bound what librdkafka reads ahead of the window, and keep
            // each partition's block in a fetch small enough that
            // partitions interleave (see `READ_AHEAD`).
            .default_to("queued.max.messages.kbytes", "16384")
            .default_to("max.partition.fetch.bytes", "65536")
            .default_to("fetch.wait.max.ms", "100")
            // When its queue is full (the thresholds above, or 100,000
            // records), librdkafka stops fetching for this long; its
            // default, a second, idles a job that drains the queue in
            // less, which on a backlog of small records it does.
            .default_to("fetch.queue.backoff.ms", "10")
            .set("group.id", &config.group)
            // Offsets are committed by hand, and only what `Acks` allows.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Where a partition with no committed offset, or one out of
            // range, starts. librdkafka logs each reset as a warning.
            .set("auto.offset.reset", config.offset_reset.as_str())
            // The statistics that consumer lag is read from, each second.
            .set("statistics.interval.ms", "1000");
        let mut protocol = "static";
        if let Assignment::Group(wanted) = config.assignment {
            let consumer_protocol = match (wanted, &versions) {
                (GroupProtocol::Consumer, _) => true,
                (GroupProtocol::Classic, _) => false,
                (GroupProtocol::Auto, Some(versions)) => versions.offers_consumer_protocol(),
                // Over TLS or SASL fila cannot ask the broker itself; the
                // classic protocol works on 3.x and 4.x brokers alike.
                (GroupProtocol::Auto, None) => false,
            };
            if consumer_protocol {
                // KIP-848: the broker assigns; the assignor and session
                // settings are the group's, not the member's.
                client.set("group.protocol", "consumer");
                protocol = "consumer (KIP-848)";
            } else {
                client
                    .set("group.protocol", "classic")
                    .default_to("partition.assignment.strategy", "cooperative-sticky");
                protocol = "classic";
            }
        }
        let context = SourceContext {
            brokers: config.cluster.brokers.clone(),
            topic: config.topic.clone(),
            acks: Arc::new(Acks::new()),
            commit: parking_lot::Mutex::new(BoundedCall::new("fila-commit-call")),
            revoked: Mutex::new(Vec::new()),
            assigned: AtomicBool::new(false),
            offsets_unfetched: AtomicBool::new(false),
            unstarted: Mutex::new(Unstarted::default()),
            logging: Logging::new(brokers, config.retry_timeout),
            eos,
            status: Arc::new(SourceStatus::starting(
                &config.topic,
                match config.assignment {
                    Assignment::Group(_) => "joining the consumer group",
                    Assignment::Static(_) => "assigning partitions",
                },
            )),
            consumer: OnceLock::new(),
            purge: if config.purge_committed {
                Some(Purge::start(&config.cluster, &config.topic)?)
            } else {
                None
            },
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
                consumer.context().status.set_ready();
            }
        }
        tracing::info!(topic = %config.topic, group = %config.group, protocol, "reading");
        let transactional_id = match config.assignment {
            Assignment::Static(r) => format!(
                "fila-{}-{}-replica-{}-of-{}",
                config.group, config.topic, r.index, r.count
            ),
            Assignment::Group(_) => format!(
                "fila-{}-{}-{}-{}",
                config.group,
                config.topic,
                hostname(),
                std::process::id()
            ),
        };
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let measure_behind = consumer.context().eos.is_some();
        Ok(RdSource {
            consumer,
            buffered: BTreeMap::new(),
            count: 0,
            turn: -1,
            paused: false,
            last_probe: Instant::now(),
            rebootstrap: Rebootstrap::new("reader"),
            transactional_id,
            reassigned: None,
            reassign_warned: None,
            checked: BTreeSet::new(),
            committed: BTreeMap::new(),
            measure_behind,
            polls: 0,
            looked: (Instant::now(), 0),
        })
    }

    /// How long handing out the records already in the input would take,
    /// at the rate the source handed them out since it last looked, for
    /// [`SourceStatus::behind`]: each partition's high watermark, as the
    /// client learned it from its last fetch (no request is made), less
    /// the offset the tracker has handed out up to. It looks on its polls,
    /// when the read-ahead is empty or every [`LOOK_BEHIND_POLLS`], and at
    /// most every [`LOOK_BEHIND_EVERY`]; while the admitting thread does
    /// not poll (a full window), the last look stands. A poll that finds
    /// nothing to hand out says the source is not behind and starts the
    /// next span ([`RdSource::caught_up`]): idle time is not counted in
    /// the rate, and what the high watermark counts that will never be
    /// handed out (transaction markers, records of aborted transactions,
    /// under read-committed those of transactions still open) is not
    /// counted as a backlog once the rest is read.
    fn look_behind(&mut self) {
        self.polls = self.polls.wrapping_add(1);
        if !self.measure_behind || (self.count != 0 && self.polls % LOOK_BEHIND_POLLS != 0) {
            return;
        }
        let now = Instant::now();
        let (at, before) = self.looked;
        let span = now.saturating_duration_since(at);
        if span < LOOK_BEHIND_EVERY {
            return;
        }
        let acks = &self.context().acks;
        let tracked = acks.tracked();
        let unread = acks
            .read_up_to()
            .into_iter()
            .filter_map(|(partition, next)| {
                let high = self.high_watermark(partition)?;
                u64::try_from(high - next).ok()
            })
            .sum();
        self.looked = (now, tracked);
        self.context().status.set_behind(time_to_read(
            unread,
            tracked.saturating_sub(before),
            span,
        ));
    }

    /// Nothing to hand out: the source is not behind, and the next span
    /// starts now.
    fn caught_up(&mut self) {
        if self.measure_behind {
            self.looked = (Instant::now(), self.context().acks.tracked());
            self.context().status.set_behind(Duration::ZERO);
        }
    }

    /// The high watermark of `partition` that the client learned from its
    /// last fetch, if it fetched the partition.
    fn high_watermark(&self, partition: i32) -> Option<i64> {
        let topic = CString::new(self.topic()).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the pointer is this source's consumer's, alive as long
        // as `self`; the topic name is NUL-terminated and outlives the
        // call, which is safe from any thread. librdkafka looks the
        // partition up under the client's lock, making it (and marking it
        // wanted) if it had no such partition: the partitions asked for
        // are ones the tracker holds, assigned and wanted already. It
        // then reads the offsets cached from the last fetch under the
        // partition's lock.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (error == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// After librdkafka failed to fetch committed offsets: the partitions
    /// it left unstarted are assigned again, which fetches their offsets
    /// again.
    ///
    /// librdkafka does not retry that fetch when the coordinator refuses it
    /// (moving, or loading on a broker just started) or when the
    /// assignment changed while it was out: the partitions it asked for
    /// stay unstarted until they are assigned again, and while one is
    /// held that way no other partition's offset is fetched either. Which
    /// ones, librdkafka's statistics after the refusal say (they come
    /// every second): those of the assignment that two reports in a row
    /// show not fetching. A partition that handed out a record is never
    /// among them, and one that has started is left alone, so that under
    /// `--offset-reset latest` with no commit it does not start again
    /// further on. fila's group protocols are cooperative unless the user
    /// sets an eager assignor, so these partitions move alone, without a
    /// rebalance, and the group's view of what this member owns does not
    /// change; an eager group leaves them to its next rebalance. It runs
    /// between polls, on the thread that serves fila's rebalance
    /// callbacks, so none of them runs meanwhile.
    fn refetch_offsets(&mut self) -> Result<(), ConnectorError> {
        // At most once a second, while the coordinator keeps refusing.
        let due = self
            .reassigned
            .map_or(true, |at| at.elapsed() >= PROBE_INTERVAL);
        let context = self.consumer.context();
        if !due || !context.offsets_unfetched.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(unstarted) = lock(&context.unstarted).settled() else {
            return Ok(());
        };
        // Looked at again just before the calls (below); looking here
        // first spares the assignment's round trip to librdkafka on every
        // poll while other partitions' records keep the queue full.
        if !self.queue_is_empty() {
            return Ok(());
        }
        if matches!(self.consumer.rebalance_protocol(), RebalanceProtocol::Eager) {
            // An eager group's assignment changes only whole, in its
            // rebalances (`partition.assignment.strategy` set to an eager
            // assignor), and librdkafka refuses incremental calls there:
            // the group's next rebalance assigns these partitions afresh.
            context.offsets_unfetched.store(false, Ordering::Release);
            tracing::warn!(
                topic = %context.topic,
                "the committed offsets could not be fetched: with an eager assignor, partitions \
                 left unstarted start at the group's next rebalance"
            );
            return Ok(());
        }
        if self.consumer.assignment_lost() {
            // The group takes a lost assignment back in its next
            // rebalance, which assigns and fetches afresh; assigning it
            // here would hide that it was lost. Look again then.
            return Ok(());
        }
        let topic = context.topic.as_str();
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| kafka_error(&context.brokers, "reading the assignment", e))?;
        let mut again = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for e in assigned.elements_for_topic(topic) {
            let p = e.partition();
            if unstarted.contains(&p) && !self.checked.contains(&p) {
                // Stored: the group's committed offset, or
                // auto.offset.reset where none is.
                again
                    .add_partition_offset(topic, p, Offset::Stored)
                    .map_err(|e| kafka_error(&context.brokers, "assigning partitions again", e))?;
                partitions.push(p);
            }
        }
        if partitions.is_empty() {
            // Every partition started after all.
            context.offsets_unfetched.store(false, Ordering::Release);
            return Ok(());
        }
        // A rebalance librdkafka has queued for this thread to serve
        // waits for the application's own (un)assign call, and would take
        // one made here for it: it could then let the group hand out
        // partitions this member still reads. So only while the queue is
        // empty, looked at just before the calls; a rebalance queued
        // between the look and the calls can still slip in. Records of
        // other partitions in the queue hold this back until the source has
        // caught up with them, or paused them with its read-ahead full: on
        // a backlog that the source itself cannot keep up with, the
        // stalled partitions wait for it.
        if !self.queue_is_empty() {
            return Ok(());
        }
        context.offsets_unfetched.store(false, Ordering::Release);
        self.reassigned = Some(Instant::now());
        // Once a run of refusals, and every 30 s while it lasts (the
        // refusal itself is logged as the outage it is).
        let message = "the committed offsets could not be fetched; assigning the partitions left \
                       unstarted again";
        if self
            .reassign_warned
            .map_or(true, |at| at.elapsed() >= REASSIGN_WARN_EVERY)
        {
            self.reassign_warned = Some(Instant::now());
            tracing::warn!(topic, ?partitions, "{message}");
        } else {
            tracing::debug!(topic, ?partitions, "{message}");
        }
        self.consumer
            .incremental_unassign(&again)
            .and_then(|()| self.consumer.incremental_assign(&again))
            .map_err(|e| kafka_error(&context.brokers, "assigning partitions again", e))?;
        if self.paused {
            self.set_paused(true);
        }
        Ok(())
    }

    /// Whether the consumer's queue holds nothing at all: no record, no
    /// rebalance and no other event for this thread to serve.
    fn queue_is_empty(&self) -> bool {
        let client = self.consumer.client();
        // SAFETY: the pointer is this source's consumer's, alive as long
        // as `self`; the queue handle taken is released before returning,
        // and both calls are safe from any thread.
        unsafe {
            let queue = rdkafka::bindings::rd_kafka_queue_get_consumer(client.native_ptr());
            if queue.is_null() {
                return true;
            }
            let length = rdkafka::bindings::rd_kafka_queue_length(queue);
            rdkafka::bindings::rd_kafka_queue_destroy(queue);
            length == 0
        }
    }

    fn context(&self) -> &SourceContext {
        self.consumer.context()
    }

    pub(super) fn consumer(&self) -> Arc<BaseConsumer<SourceContext>> {
        self.consumer.clone()
    }

    /// The transactional id of this source's exactly-once sink: the
    /// group's, the input's and, with a static assignment, the replica's,
    /// so that a replica restarted in its place fences the old process at
    /// once. A group member's has its host and process, since the group
    /// fences members by their generation.
    /// The topic it reads.
    pub(super) fn topic(&self) -> &str {
        &self.context().topic
    }

    pub(super) fn transactional_id(&self) -> String {
        self.transactional_id.clone()
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
                    drop(m);
                    let Position { partition, offset } = envelope.position;
                    if self.checked.insert(partition) && !self.check_start(partition, offset)? {
                        continue;
                    }
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

    /// Whether the first record of `partition` since it was assigned, at
    /// `offset`, may be handed out: it may not when the group has a
    /// committed offset for the partition, still in the log, and the record
    /// is not there. The partition then moves to that offset, and reading
    /// goes on from there.
    ///
    /// librdkafka starts a partition at `auto.offset.reset` when it asked
    /// for the committed offset while an open transaction held it
    /// (UNSTABLE_OFFSET_COMMIT: a member killed mid-commit) and the
    /// assignment changed before the answer came (members joining). With
    /// `earliest`, everything before the commit would be read and written
    /// again, under exactly-once too; with `latest`, what follows it would
    /// be skipped. A record above the commit can also be the first because
    /// the records between were aborted or compacted away: the move then
    /// costs one fetch, and the same record comes again. A partition starts
    /// rarely, so the look-up costs one request per assignment, which
    /// also learns the offsets of the other partitions assigned and not
    /// checked yet (no one else commits them before they are read here).
    /// It waits while a transaction holds the offset, or the look-up fails
    /// otherwise, with the record held back meanwhile: for the longer of
    /// [`START_CHECK_BOUND`] and the retry timeout, at most
    /// [`START_CHECK_CAP`]. Past that, the run stops
    /// with an error rather than read from where the client may have
    /// started wrongly (a restart reads from the commit).
    fn check_start(&mut self, partition: i32, offset: i64) -> Result<bool, ConnectorError> {
        let committed = match self.committed.remove(&partition) {
            Some(committed) => committed,
            None => self.committed_at_start(partition)?,
        };
        let Offset::Offset(committed) = committed else {
            return Ok(true);
        };
        if offset == committed {
            return Ok(true);
        }
        let context = self.consumer.context();
        let topic = context.topic.as_str();
        // A commit outside the log (deleted by retention, or a topic made
        // anew) is what `--offset-reset` is for. Where the log's range is
        // not known, reading moves to the commit all the same: if it is
        // outside the log after all, the client applies `--offset-reset`
        // there, as it would have.
        match self
            .consumer
            .fetch_watermarks(topic, partition, COMMITTED_TIMEOUT)
        {
            Ok((low, high)) if !(low..=high).contains(&committed) => return Ok(true),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                topic,
                partition,
                offset,
                committed,
                "could not learn the partition's log range ({e}); reading from the commit"
            ),
        }
        if offset < committed {
            tracing::warn!(
                topic, partition, offset, committed,
                "the client started a partition below its committed offset; reading from the commit"
            );
        } else {
            tracing::debug!(
                topic,
                partition,
                offset,
                committed,
                "the first record is above the committed offset; reading from the commit"
            );
        }
        self.consumer
            .seek(
                topic,
                partition,
                Offset::Offset(committed),
                COMMITTED_TIMEOUT,
            )
            .map_err(|e| {
                kafka_error(
                    &context.brokers,
                    &format!("moving partition {partition} of {topic} to its committed offset"),
                    e,
                )
            })?;
        Ok(false)
    }

    /// Asks for `partition`'s committed offset, with those of the other
    /// assigned partitions not checked yet, which it keeps for their own
    /// first records. Asks again for `partition` alone while the answer is
    /// an error (a transaction holding the offset, the coordinator moving),
    /// for the longer of [`START_CHECK_BOUND`] and the retry timeout (at
    /// most [`START_CHECK_CAP`]); an error if it never learns it.
    fn committed_at_start(&mut self, partition: i32) -> Result<Offset, ConnectorError> {
        let context = self.consumer.context();
        let topic = context.topic.as_str();
        let mut asked = TopicPartitionList::new();
        asked.add_partition(topic, partition);
        if let Ok(assigned) = self.consumer.assignment() {
            for e in assigned.elements_for_topic(topic) {
                let p = e.partition();
                if p != partition && !self.checked.contains(&p) {
                    asked.add_partition(topic, p);
                }
            }
        }
        let bound = START_CHECK_BOUND
            .max(context.logging.outage.timeout())
            .min(START_CHECK_CAP);
        let deadline = Instant::now() + bound;
        loop {
            let answer = self
                .consumer
                .committed_offsets(asked.clone(), COMMITTED_TIMEOUT);
            if let Ok(list) = &answer {
                for e in list.elements_for_topic(topic) {
                    if e.partition() != partition && e.error().is_ok() {
                        self.committed.insert(e.partition(), e.offset());
                    }
                }
            }
            let why = match &answer {
                Ok(list) => match list.find_partition(topic, partition) {
                    Some(e) => match e.error() {
                        Ok(()) => return Ok(e.offset()),
                        Err(e) => e.to_string(),
                    },
                    None => "no answer for the partition".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(error(
                    &context.brokers,
                    format!(
                        "could not learn the group's committed offset of partition \
                         {partition} of {topic} within {}s ({why}); stopping rather than read \
                         from where the client may have started it wrongly (a restart reads \
                         from the commit)",
                        bound.as_secs()
                    ),
                ));
            }
            tracing::debug!(topic, partition, "asking the committed offset again: {why}");
            std::thread::sleep(Duration::from_millis(200));
            asked = TopicPartitionList::new();
            asked.add_partition(topic, partition);
        }
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
            } else {
                self.rebootstrap_maybe();
            }
        }
        self.consumer.context().logging.outage.check()
    }

    /// See [`Rebootstrap`].
    fn rebootstrap_maybe(&mut self) {
        let context = self.consumer.context();
        self.rebootstrap.maybe(
            self.consumer.client(),
            &context.logging.outage,
            &context.brokers,
        );
    }

    /// Before a rewind: takes the group's offsets as the broker has them,
    /// where they are past what this process knows it committed. A
    /// transaction whose commit was sent and whose answer was lost (its
    /// broker restarted under it) is reported failed, yet it may have
    /// committed: the producer made again after it completes what its
    /// predecessor prepared to commit. Rewinding to the offsets known here
    /// would then write its records twice. The broker's answer is stable:
    /// with read-committed, it waits for open transactions' offsets to
    /// settle. A failure to ask is a broker fault like a failed read, and
    /// gives the client its bootstrap servers again as a failed read does.
    fn learn_committed(&mut self) -> Result<(), ConnectorError> {
        // The consumer's own handle: `rebootstrap_maybe` below borrows `self`.
        let consumer = self.consumer.clone();
        let context = consumer.context();
        if context.eos.is_none() {
            return Ok(());
        }
        let known = context.acks.committed_offsets();
        if known.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(known.len());
        for &partition in known.keys() {
            tpl.add_partition(&context.topic, partition);
        }
        loop {
            match consumer.committed_offsets(tpl.clone(), COMMITTED_TIMEOUT) {
                Ok(committed) => {
                    let ahead: Vec<(i32, i64)> = committed
                        .elements_for_topic(&context.topic)
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o)
                                if known.get(&e.partition()).is_some_and(|&k| o > k) =>
                            {
                                Some((e.partition(), o))
                            }
                            _ => None,
                        })
                        .collect();
                    if !ahead.is_empty() {
                        tracing::warn!(
                            topic = %context.topic, ?ahead,
                            "a transaction reported failed had committed: reading on from its offsets"
                        );
                        context.mark_committed(&ahead);
                    }
                    context.logging.outage.succeeded();
                    return Ok(());
                }
                Err(e) => {
                    let outage = &context.logging.outage;
                    outage.failed(&format!("asking the group's committed offsets: {e}"));
                    outage.check()?;
                    let backoff = outage.backoff();
                    self.rebootstrap_maybe();
                    std::thread::sleep(backoff);
                }
            }
        }
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
            self.checked.remove(&p);
            self.committed.remove(&p);
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

pub(super) fn envelope_of(m: &BorrowedMessage<'_>) -> Envelope {
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

/// How long handing out `unread` records takes at the rate of `read`
/// records in `span`. Nothing unread takes no time; records waiting while
/// none were handed out (a stall, or records each slower than `span`)
/// take as long as can be said.
fn time_to_read(unread: u64, read: u64, span: Duration) -> Duration {
    if unread == 0 {
        Duration::ZERO
    } else if read == 0 {
        Duration::MAX
    } else {
        Duration::try_from_secs_f64(span.as_secs_f64() * unread as f64 / read as f64)
            .unwrap_or(Duration::MAX)
    }
}

impl Source for RdSource {
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError> {
        self.look_behind();
        if self.count == 0 {
            self.fill(timeout, READ_AHEAD)?;
            // Revocations run only inside the consumer's poll, in `fill`.
            self.forget_revoked();
            self.refetch_offsets()?;
            self.watch_outage()?;
        }
        let next = self.next_round_robin();
        if next.is_none() {
            self.caught_up();
        }
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
        self.look_behind();
        let limit = self.count + KEEP_ALIVE_TAKE;
        self.fill(KEEP_ALIVE_WAIT, limit)?;
        self.forget_revoked();
        self.refetch_offsets()?;
        self.watch_outage()
    }

    fn status(&self) -> Option<Arc<SourceStatus>> {
        Some(self.context().status.clone())
    }

    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(Some(Committing {
            acks: self.context().acks.clone(),
            committer: Box::new(RdCommitter {
                consumer: self.consumer.clone(),
                refused_since: None,
                in_transactions: self.context().eos.is_some(),
            }),
        }))
    }

    /// Seeks every partition whose records were handed out back to its
    /// last commit, and drops their read-ahead.
    fn rewind(&mut self) -> Result<(), ConnectorError> {
        self.learn_committed()?;
        let context = self.consumer.context();
        let at = context.acks.rewind();
        if at.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(at.len());
        for &(partition, offset) in &at {
            if let Some(q) = self.buffered.remove(&partition) {
                self.count -= q.len();
            }
            tpl.add_partition_offset(&context.topic, partition, Offset::Offset(offset))
                .map_err(|e| kafka_error(&context.brokers, "rewinding", e))?;
        }
        let sought = self
            .consumer
            .seek_partitions(tpl, Duration::from_secs(10))
            .map_err(|e| kafka_error(&context.brokers, "rewinding to the last commit", e))?;
        for e in sought.elements() {
            if let Err(err) = e.error() {
                return Err(kafka_error(
                    &context.brokers,
                    &format!("rewinding partition {}", e.partition()),
                    err,
                ));
            }
        }
        tracing::info!(topic = %context.topic, ?at, "rewound to the last commit");
        Ok(())
    }
}

/// This host's name, for a transactional id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::rd::admin::commit_group_offsets;
    use crate::kafka::{Cluster, OffsetReset, Replica};
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    /// The next record `source` hands out, within 30 s.
    fn next(source: &mut RdSource) -> Envelope {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Polled::Record(e) = source.poll(Duration::from_millis(200)).unwrap() {
                return e;
            }
        }
        panic!("no record within 30 s");
    }

    /// A mock cluster holding topic `in`, one partition of 20 records, and
    /// a source configuration for it, group `group`, every partition.
    fn twenty_records() -> (
        MockCluster<'static, DefaultProducerContext>,
        Cluster,
        SourceConfig,
    ) {
        records_in_partition_0(1, 20)
    }

    /// A mock cluster holding topic `in` of `partitions` partitions, with
    /// `records` records in partition 0, and a source configuration for
    /// it, group `group`, every partition.
    fn records_in_partition_0(
        partitions: i32,
        records: u32,
    ) -> (
        MockCluster<'static, DefaultProducerContext>,
        Cluster,
        SourceConfig,
    ) {
        let mock = MockCluster::new(1).unwrap();
        let brokers = mock.bootstrap_servers();
        mock.create_topic("in", partitions, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for i in 0..records {
            let payload = i.to_string();
            producer
                .send(BaseRecord::<(), _>::to("in").partition(0).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let cluster = Cluster::new(brokers, Default::default());
        let config = every_partition_of_in(&cluster);
        (mock, cluster, config)
    }

    /// A source configuration for topic `in`, group `group`, every
    /// partition, from the earliest offset.
    fn every_partition_of_in(cluster: &Cluster) -> SourceConfig {
        SourceConfig {
            cluster: cluster.clone(),
            topic: "in".into(),
            group: "group".into(),
            assignment: Assignment::Static(Replica::ALL),
            offset_reset: OffsetReset::Earliest,
            retry_timeout: Duration::from_secs(30),
            purge_committed: false,
        }
    }

    /// A partition that the client starts away from the group's commit
    /// (librdkafka's `auto.offset.reset` after a committed offset it could
    /// not read) is moved to the commit before any record is handed out.
    /// The mock cluster cannot make librdkafka lose the commit, so the
    /// test moves the consumer itself and marks the partition as just
    /// assigned, as a new assignment does.
    #[test]
    fn a_partition_started_away_from_its_commit_moves_to_the_commit() {
        let (_mock, cluster, config) = twenty_records();
        let mut source = RdSource::connect(config).unwrap();
        // No commit yet: the first record is the log's first.
        assert_eq!(next(&mut source).position.offset, 0);

        commit_group_offsets(&cluster, "group", "in", &[(0, 12)]).unwrap();
        let restart_at = |source: &mut RdSource, offset: i64| {
            source
                .consumer
                .seek("in", 0, Offset::Offset(offset), Duration::from_secs(10))
                .unwrap();
            source.buffered.clear();
            source.count = 0;
            source.checked.clear();
            source.committed.clear();
        };
        // Below the commit: reading moves up to it.
        restart_at(&mut source, 2);
        assert_eq!(next(&mut source).position.offset, 12);
        // Above it: back down to it.
        restart_at(&mut source, 15);
        assert_eq!(next(&mut source).position.offset, 12);
        // Once checked, a partition reads on as it goes.
        assert_eq!(next(&mut source).position.offset, 13);
    }

    /// How far behind the source reads: the records in the partition past
    /// what was handed out, at the rate they were handed out; none once
    /// everything was.
    #[test]
    fn the_source_says_how_far_behind_it_reads() {
        let (_mock, _cluster, config) = twenty_records();
        let mut source = RdSource::connect(config).unwrap();
        // Only an exactly-once source measures; this one is made to.
        source.measure_behind = true;
        let acks = source.context().acks.clone();
        let status = source.context().status.clone();
        let hand_out = |source: &mut RdSource, n: usize| {
            for _ in 0..n {
                let e = next(source);
                acks.track(e.position, e.payload.len());
            }
        };
        let look = |source: &mut RdSource| {
            std::thread::sleep(LOOK_BEHIND_EVERY);
            // As if the read-ahead had just run dry: the source looks.
            let count = std::mem::replace(&mut source.count, 0);
            source.look_behind();
            source.count = count;
            status.behind()
        };
        hand_out(&mut source, 5);
        look(&mut source);
        let since = source.looked.0;
        hand_out(&mut source, 5);
        let behind = look(&mut source);
        // 10 left, at the rate of 5 in the span between the looks.
        let span = source.looked.0 - since;
        let millis = |d: Duration| d.as_millis();
        assert_eq!(
            millis(behind),
            millis(time_to_read(10, 5, span)),
            "to the ms"
        );
        assert!(behind >= 2 * LOOK_BEHIND_EVERY);
        assert_eq!(look(&mut source), Duration::MAX, "none handed out since");
        hand_out(&mut source, 10);
        assert_eq!(look(&mut source), Duration::ZERO, "all handed out");
        // A poll that finds nothing to hand out says so at once.
        status.set_behind(Duration::from_secs(5));
        assert!(matches!(
            source.poll(Duration::from_millis(50)).unwrap(),
            Polled::Idle
        ));
        assert_eq!(status.behind(), Duration::ZERO, "nothing left to read");
    }

    #[test]
    fn time_to_read_is_the_unread_at_the_rate_read() {
        let second = Duration::from_secs(1);
        assert_eq!(time_to_read(0, 0, second), Duration::ZERO);
        assert_eq!(time_to_read(0, 10, second), Duration::ZERO);
        assert_eq!(time_to_read(500, 100, second), 5 * second);
        assert_eq!(time_to_read(50, 200, second), Duration::from_millis(250));
        assert_eq!(time_to_read(1, 0, second), Duration::MAX, "a stall");
        assert_eq!(time_to_read(u64::MAX, 1, second), Duration::MAX);
    }

    /// One look-up learns the committed offsets of every assigned
    /// partition not checked yet: the first record of each of the others
    /// is checked against what it learned, with no request of its own.
    #[test]
    fn one_look_up_learns_every_unchecked_partitions_commit() {
        let mock = MockCluster::new(1).unwrap();
        let brokers = mock.bootstrap_servers();
        mock.create_topic("in", 4, 1).unwrap();
        let cluster = Cluster::new(brokers, Default::default());
        commit_group_offsets(&cluster, "group", "in", &[(0, 4), (2, 2)]).unwrap();
        let mut source = RdSource::connect(every_partition_of_in(&cluster)).unwrap();
        source.checked.insert(1);
        assert_eq!(source.committed_at_start(0).unwrap(), Offset::Offset(4));
        // Partition 0's own answer is used at once, and 1 was checked
        // already: the map keeps 2's commit, and that 3 has none.
        assert_eq!(
            source
                .committed
                .iter()
                .map(|(p, o)| (*p, *o))
                .collect::<Vec<_>>(),
            vec![(2, Offset::Offset(2)), (3, Offset::Invalid)]
        );
    }

    /// librdkafka's mock cluster stands in for a commit whose answer was
    /// lost: the group's offset moves on the broker while this process
    /// knows nothing of it.
    #[test]
    fn under_exactly_once_a_rewind_goes_to_the_brokers_commit_when_it_is_further_on() {
        let (_mock, cluster, config) = twenty_records();
        let mut source = RdSource::connect_with(config, Some(Arc::new(Link::default()))).unwrap();
        let acks = source.committing().unwrap().unwrap().acks;
        for offset in 0..10 {
            let e = next(&mut source);
            assert_eq!(e.position.offset, offset);
            acks.track(e.position, e.payload.len());
        }

        // Nothing committed as far as this process knows: back to 0.
        source.rewind().unwrap();
        assert_eq!(next(&mut source).position.offset, 0);

        // The broker holds the group at 6: the rewind goes there.
        commit_group_offsets(&cluster, "group", "in", &[(0, 6)]).unwrap();
        source.rewind().unwrap();
        assert_eq!(acks.committed_offsets()[&0], 6);
        assert_eq!(next(&mut source).position.offset, 6);
    }

    /// librdkafka does not fetch a partition's committed offset again when
    /// the coordinator refused the fetch, and leaves the partition
    /// unstarted: the source assigns it again, and every record is read.
    fn refused_offset_fetch_is_made_again(assignment: Assignment) {
        let (mock, cluster, config) = twenty_records();
        // The one commit is at 5, so a partition started anywhere else
        // (auto.offset.reset) would show at its first record.
        commit_group_offsets(&cluster, "group", "in", &[(0, 5)]).unwrap();
        mock.request_errors(
            RDKafkaApiKey::OffsetFetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
        );
        let mut source = RdSource::connect(SourceConfig {
            assignment,
            ..config
        })
        .unwrap();
        for offset in 5..20 {
            assert_eq!(next(&mut source).position.offset, offset);
        }
    }

    /// A partition that started is not assigned again after a refusal,
    /// even one that has handed out nothing: under `--offset-reset latest`
    /// with no commit it would start again further on, past what came
    /// meanwhile.
    #[test]
    fn a_refusal_leaves_partitions_that_started_alone() {
        let (_mock, _cluster, config) = records_in_partition_0(2, 5);
        let mut source = RdSource::connect(config).unwrap();
        for offset in 0..5 {
            assert_eq!(next(&mut source).position.offset, offset);
        }
        // Partition 1 started and has nothing to read. As if a fetch of
        // committed offsets had just been refused:
        source
            .context()
            .offsets_unfetched
            .store(true, Ordering::Release);
        *lock(&source.context().unstarted) = Unstarted::default();
        // Two reports settle which partitions are unstarted; polls after
        // the third have seen them settled.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&source.context().unstarted).reports < 3 && Instant::now() < deadline {
            assert!(matches!(
                source.poll(Duration::from_millis(200)).unwrap(),
                Polled::Idle
            ));
        }
        assert!(
            lock(&source.context().unstarted).reports >= 3,
            "three statistics reports did not come in 30 s"
        );
        assert!(
            source.reassigned.is_none(),
            "a partition was assigned again"
        );
        assert!(!source.context().offsets_unfetched.load(Ordering::Acquire));
    }

    /// An eager assignor (the user's `partition.assignment.strategy`)
    /// refuses incremental calls: a refused fetch is left to the group's
    /// next rebalance, and the run goes on.
    #[test]
    fn with_an_eager_assignor_a_refused_offset_fetch_does_not_stop_the_run() {
        let (mock, cluster, config) = twenty_records();
        mock.request_errors(
            RDKafkaApiKey::OffsetFetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
        );
        let mut properties = cluster.properties.clone();
        properties.set("partition.assignment.strategy", "range");
        let mut source = RdSource::connect(SourceConfig {
            cluster: Cluster::new(cluster.brokers.clone(), properties),
            assignment: Assignment::Group(GroupProtocol::Classic),
            ..config
        })
        .unwrap();
        // The refusal is seen, then left to the group, within 30 s.
        let (mut refused, mut left) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !left && Instant::now() < deadline {
            source.poll(Duration::from_millis(200)).unwrap();
            let unfetched = source.context().offsets_unfetched.load(Ordering::Acquire);
            refused |= unfetched;
            left = refused && !unfetched;
        }
        assert!(
            refused && left,
            "refused: {refused}, left to the group: {left}"
        );
        assert!(source.reassigned.is_none());
    }

    #[test]
    fn a_group_member_whose_offset_fetch_was_refused_reads_every_record() {
        refused_offset_fetch_is_made_again(Assignment::Group(GroupProtocol::Classic));
    }

    #[test]
    fn a_kip848_member_whose_offset_fetch_was_refused_reads_every_record() {
        refused_offset_fetch_is_made_again(Assignment::Group(GroupProtocol::Consumer));
    }

    #[test]
    fn a_static_assignment_whose_offset_fetch_was_refused_reads_every_record() {
        refused_offset_fetch_is_made_again(Assignment::Static(Replica::ALL));
    }
}
