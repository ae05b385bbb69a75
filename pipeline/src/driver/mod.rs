//! Connects a source and a sink to the runtime.
//!
//! The calling thread is the source loop: it takes a window slot *first*
//! and only then polls the source, so while the window is full nothing is
//! read. Each record becomes one runtime unit. Its stages emit results into
//! a channel, and its completion adds a `Done` marker behind them. One sink
//! thread writes results, flushes, and only then acknowledges the positions
//! of the records whose `Done` it has seen. For a source that commits, a
//! commit thread commits what the acknowledgements allow, so the sink
//! never waits on a commit's round trip.
//!
//! Commits go by time: every `commit_interval`, whatever the job costs,
//! so the broker serves a few commits a second rather than one per batch
//! of records. The source never waits for a commit while the job keeps
//! up. What a crash replays is what was read since the last commit, and
//! the source loop keeps that below a [`ReplayBound`] (records and bytes)
//! before it reads another record; the bound is a backstop for a sink or
//! a broker that falls behind, so it also bounds the memory held between
//! the source and the commit. When half of it is reached, the commit
//! thread commits at once rather than wait for the interval.
//!
//! The window is not the replay bound: a record leaves the window when
//! its last stage is done, but stays uncommitted for up to the sink's
//! linger (a tick while batches fill), a produce and a commit after that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fila_connectors::units::Bytes;
use fila_connectors::{
    Acks, ChangelogReader, ConnectorError, Envelope, Polled, ReplayBound, Sink, Source,
    Uncommitted, DEFAULT_MAX_RECORD_BYTES,
};
use fila_runtime::{AdmitError, Runtime};
use hdrhistogram::Histogram;

use crate::counters::{Counters, Phase};
use crate::dataflow::{Input, Job};
use crate::outlet::{Event, Origin, Outlet};

mod commit;
mod sink;

use commit::CommitClock;

/// How the driver runs: every knob, with its default. [`Driver`] takes it
/// whole or a knob at a time.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How long one poll of the source may wait for a record.
    pub poll_timeout: Duration,
    /// The least time between two batches of the sink thread: a result
    /// that comes within a tick of the last batch waits out the tick, and
    /// the sink then takes everything that arrived meanwhile, writes it,
    /// and flushes once; one that comes later goes at once, unless it is
    /// a small batch with records in flight (`sink_linger`). (Under
    /// exactly-once a batch gathers for a tick after its first result.)
    /// With Kafka every flush is a produce request per partition written
    /// (more for a batch larger than a request: docs/design/delivery.md,
    /// chunks) that every in-sync replica must acknowledge, so the tick
    /// sets how many requests the broker serves: [`DEFAULT_SINK_TICK`]
    /// says why it is 25 ms.
    pub sink_tick: Duration,
    /// How long a batch that is still small (under [`SMALL_BATCH_BYTES`])
    /// may go on gathering while records are in flight,
    /// counted from its first result; `None` is four ticks. A slow output
    /// stream then costs the broker a request per linger instead of per
    /// tick, and waits up to the linger.
    pub sink_linger: Option<Duration>,
    /// With a committing source, how often acknowledged positions are
    /// committed ([`DEFAULT_COMMIT_INTERVAL`]).
    pub commit_interval: Duration,
    /// With a committing source, how much may be read and not yet
    /// committed: what a crash can replay ([`DEFAULT_REPLAY_BOUND`]).
    pub max_uncommitted: ReplayBound,
    /// Write each input partition's results in input order: a record's
    /// results wait until every record read before it from its partition
    /// has finished (`--ordered`).
    pub ordered: bool,
    /// Of the outputs the job keyed itself (`sink_keyed`), write only each
    /// key's last in one batch of the sink thread (a tick's worth, or a
    /// linger's) (`--latest-per-key`); implies `ordered`. For jobs whose
    /// keyed output is the key's current value, a count or a total, read
    /// as a table: a reader that keeps each key's last value sees after
    /// every batch the table it would see with `ordered` alone, and a hot key costs
    /// the broker one record a batch. Other outputs are all written, in
    /// their place among the rest. A job whose keyed outputs are events,
    /// each of which matters, must not use it.
    pub latest_per_key: bool,
    /// The largest record run: a larger one is dead-lettered unrun, with
    /// its first [`OVERSIZED_KEPT`] bytes (`--max-record-bytes`).
    pub max_record_bytes: u64,
}

/// How much of a record over `max_record_bytes` its dead letter keeps:
/// enough to tell what it was. On Kafka the whole record stays in the
/// input topic at the offset the dead letter names.
pub const OVERSIZED_KEPT: usize = 64 << 10;

/// How often offsets are committed by default. A commit is one small
/// write on the broker, so ten a second cost it little, and a crash
/// replays about a tenth of a second of input plus what was in flight.
/// Longer intervals spare the broker more and replay more.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The default replay bound. It is a backstop, not a pace: a job that
/// keeps up holds about its rate times (commit interval + sink tick +
/// produce and commit round trips) uncommitted, far below it. It bounds
/// what a crash replays and what a slow sink or broker can make fila hold
/// in memory.
pub const DEFAULT_REPLAY_BOUND: ReplayBound = ReplayBound {
    records: 100_000,
    bytes: 64 << 20,
};

/// The sink's default tick. With Kafka every flush is a produce request
/// per partition written that every in-sync replica must acknowledge, so
/// a longer tick spares the broker (which may share the cores with fila)
/// and leaves fila that CPU; an output that comes within a tick of the
/// last batch waits up to one tick longer for its flush (and a small batch
/// up to the linger, see [`SMALL_BATCH_BYTES`]), while one that comes
/// after a quiet tick is written at once. The latency a
/// run reports is taken when the record's last stage finishes, before the
/// sink. `fila load` against `fila run --source kafka --sink-tick T`
/// measures ticks against each other.
pub const DEFAULT_SINK_TICK: Duration = Duration::from_millis(25);

/// A batch smaller than this goes on gathering, while records are in
/// flight, up to the sink's linger. A produce request has a fixed cost on the broker (its
/// handling, the replicas' acknowledgements, the idempotence checks) that a
/// few dozen small records do not pay for; a stream fast enough to fill
/// this in a tick keeps the tick's latency.
pub const SMALL_BATCH_BYTES: usize = 64 << 10;

impl DriverConfig {
    /// Whether results go through the reorder buffer: `ordered`, or
    /// `latest_per_key`, whose last output of a key must be its latest.
    pub fn orders(&self) -> bool {
        self.ordered || self.latest_per_key
    }

    /// The sink's linger: `sink_linger`, or four ticks; never under the
    /// tick.
    pub fn sink_linger(&self) -> Duration {
        self.sink_linger
            .unwrap_or(self.sink_tick * 4)
            .max(self.sink_tick)
    }
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            poll_timeout: Duration::from_millis(100),
            sink_tick: DEFAULT_SINK_TICK,
            sink_linger: None,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_uncommitted: DEFAULT_REPLAY_BOUND,
            ordered: false,
            latest_per_key: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("source failed")]
    Source(#[source] ConnectorError),
    #[error("sink failed")]
    Sink(#[source] ConnectorError),
    #[error("committing offsets failed")]
    Commit(#[source] ConnectorError),
    #[error("admission failed")]
    Admit(#[from] AdmitError),
    #[error("restoring keyed state failed: {0}")]
    Restore(String),
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    /// Records that finished, whatever their outcome.
    pub messages: u64,
    pub outputs: u64,
    /// Records rejected as bad input, or whose stage panicked.
    pub dead_letters: u64,
    /// Of the dead letters, those whose stage panicked.
    pub panicked: u64,
    pub first_arrival: Option<Instant>,
    pub last_done: Option<Instant>,
    /// Arrival to output, in microseconds.
    pub latencies_us: Histogram<u64>,
}

impl RunSummary {
    /// From the first record's arrival to the last record's completion.
    pub fn elapsed(&self) -> Duration {
        match (self.first_arrival, self.last_done) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }
}

/// Runs a job over a source into a sink: the driver, configured in the
/// manner of a builder.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use fila_pipeline::driver::Driver;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = fila_runtime::Runtime::builder().build()?;
/// # let job = fila_pipeline::reference::job();
/// let mut source = fila_connectors::StdinSource::new();
/// let sink = Box::new(fila_connectors::StdoutSink::new());
/// let summary = Driver::new()
///     .sink_tick(std::time::Duration::from_millis(10))
///     .ordered(true)
///     .run(&rt, Arc::new(job), &mut source, sink)?;
/// println!("{} records", summary.messages);
/// # Ok(()) }
/// ```
///
/// A source that commits hands the driver its own offset tracker
/// (`Source::committing`), so what is tracked, acknowledged and committed
/// is always one tracker's.
#[derive(Default)]
pub struct Driver<'a> {
    config: DriverConfig,
    stop: Option<&'a AtomicBool>,
    counters: Option<&'a Counters>,
    /// Reads keyed stages' changelogs back (`restore_from`); taken by
    /// the run.
    restorer: parking_lot::Mutex<Option<Box<dyn ChangelogReader>>>,
    /// Which of the job's segments the source feeds (`segment`).
    segment: usize,
}

impl<'a> Driver<'a> {
    /// A driver with every default.
    pub fn new() -> Driver<'a> {
        Driver::default()
    }

    /// Every knob at once.
    pub fn config(mut self, config: DriverConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`DriverConfig::sink_tick`].
    pub fn sink_tick(mut self, tick: Duration) -> Self {
        self.config.sink_tick = tick;
        self
    }

    /// See [`DriverConfig::sink_linger`].
    pub fn sink_linger(mut self, linger: Duration) -> Self {
        self.config.sink_linger = Some(linger);
        self
    }

    /// See [`DriverConfig::commit_interval`].
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.config.commit_interval = interval;
        self
    }

    /// See [`DriverConfig::max_uncommitted`].
    pub fn max_uncommitted(mut self, bound: ReplayBound) -> Self {
        self.config.max_uncommitted = bound;
        self
    }

    /// See [`DriverConfig::max_record_bytes`].
    pub fn max_record_bytes(mut self, bytes: u64) -> Self {
        self.config.max_record_bytes = bytes;
        self
    }

    /// See [`DriverConfig::ordered`].
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.config.ordered = ordered;
        self
    }

    /// See [`DriverConfig::latest_per_key`].
    pub fn latest_per_key(mut self, latest: bool) -> Self {
        self.config.latest_per_key = latest;
        self
    }

    /// Stops reading once `stop` is set (and the runtime closed, to wake
    /// an admission that waits): what is in flight drains, flushes and is
    /// committed.
    pub fn stop_on(mut self, stop: &'a AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Runs segment `segment` of a job split into segments on Kafka
    /// (`Job::segments`): the source is then the repartition topic that
    /// segment reads. The first, 0, is the default: the job's input.
    pub fn segment(mut self, segment: usize) -> Self {
        self.segment = segment;
        self
    }

    /// Restores the state of a job's keyed stages with `reader`: a
    /// partition's state is rebuilt from its changelog before its first
    /// record runs, and again after an aborted transaction. A job whose
    /// changelogs are attached (`Job::attach_topics`) needs one.
    pub fn restore_from(self, reader: Box<dyn ChangelogReader>) -> Self {
        *self.restorer.lock() = Some(reader);
        self
    }

    /// Counts finished records in `counters` as they finish, for a
    /// metrics endpoint.
    pub fn counters(mut self, counters: &'a Counters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Runs `job` over everything `source` yields (until it ends, the stop
    /// flag is set and the runtime closed, or an error), writes results to
    /// `sink`, and commits acknowledged positions. Everything admitted is
    /// drained, flushed and acknowledged before this returns, error or
    /// not.
    pub fn run(
        &self,
        rt: &Runtime,
        job: Arc<Job>,
        source: &mut dyn Source,
        sink: Box<dyn Sink>,
    ) -> Result<RunSummary, DriverError> {
        let own_counters = Counters::default();
        let counters = self.counters.unwrap_or(&own_counters);
        let never = AtomicBool::new(false);
        let stop = self.stop.unwrap_or(&never);
        let config = &self.config;
        let mut sink = sink;
        let exactly_once = sink.transactions().is_some();
        let output_limit = sink.output_limit();
        let committing = source.committing().map_err(DriverError::Source)?;
        if exactly_once && committing.is_none() {
            return Err(DriverError::Source(ConnectorError::Config {
                message: "exactly-once needs a source whose offsets can be committed".into(),
            }));
        }
        let restorer = self.restorer.lock().take();
        let segment = self.segment;
        if segment >= job.segments() {
            return Err(DriverError::Restore(format!(
                "the job runs {} segment(s); there is no segment {segment}",
                job.segments()
            )));
        }
        if job.has_changelogs(segment) && (restorer.is_none() || committing.is_none()) {
            return Err(DriverError::Restore(
                "a job that writes changelogs needs a source whose offsets are committed, \
                 and a reader of the changelogs"
                    .into(),
            ));
        }
        let bound = config.max_uncommitted;
        // The epoch records are admitted in (exactly-once): an aborted
        // transaction starts the next.
        let (epoch, rewound) = (AtomicU64::new(0), AtomicU64::new(0));
        // Records this segment's source has read: the sink thread compares
        // it with the records it saw finish. The counters add up every
        // segment's.
        let read = AtomicU64::new(0);
        let in_call = sink::InCall::default();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let acks = committing.as_ref().map(|c| c.acks.clone());
            if let Some(acks) = &acks {
                counters.watch(acks.clone());
            }
            let source_status = source.status();
            if let Some(status) = &source_status {
                counters.watch_source(status.clone());
            }
            let (acked_tx, commit_thread) = match committing {
                Some(c) if !exactly_once => {
                    let (acked_tx, acked_rx) = mpsc::channel();
                    let clock =
                        CommitClock::new(c.committer, config.commit_interval, bound, counters);
                    let acks = c.acks;
                    let thread = std::thread::Builder::new()
                        .name("fila-commit".into())
                        .spawn_scoped(s, move || {
                            let result = clock.run(acked_rx, &acks);
                            if result.is_err() {
                                // Nothing more can be committed: stop
                                // reading.
                                rt.close();
                            }
                            result
                        })
                        .expect("spawning the commit thread");
                    (Some(acked_tx), Some(thread))
                }
                _ => (None, None),
            };
            let (sink_acks, epoch_ref, rewound_ref, in_call_ref, read_ref) =
                (acks.clone(), &epoch, &rewound, &in_call, &read);
            let sink_thread = std::thread::Builder::new()
                .name("fila-sink".into())
                .spawn_scoped(s, move || {
                    let acking = match (sink_acks.as_deref(), acked_tx) {
                        (Some(acks), _) if exactly_once => {
                            sink::Acking::InTransactions(sink::Transactional {
                                acks,
                                clock: sink::Clock::new(config.commit_interval, bound),
                                epoch: epoch_ref,
                                rewound: rewound_ref,
                                in_call: in_call_ref,
                                source: source_status,
                            })
                        }
                        (Some(acks), Some(acked)) => sink::Acking::AfterFlush { acks, acked },
                        _ => sink::Acking::None,
                    };
                    let result = sink::run(rx, sink, acking, counters, read_ref, config);
                    if result.is_err() {
                        // Stop taking records in: nothing more can be
                        // delivered.
                        rt.close();
                    }
                    result
                })
                .expect("spawning the sink thread");

            let mut admission = Admission {
                rt,
                job: &job,
                source,
                tracker: acks.as_deref().map(|acks| (acks, bound)),
                held: Uncommitted::default(),
                stop,
                config,
                tx: &tx,
                first_arrival: None,
                ordered: config.orders() || exactly_once,
                epoch: &epoch,
                rewound: &rewound,
                admitting: 0,
                counters,
                read: &read,
                in_call: exactly_once.then_some(&in_call),
                warned: None,
                restorer: restorer.filter(|_| job.has_changelogs(segment)),
                segment,
                restored: HashMap::new(),
                looked_for_moved: Instant::now(),
                output_limit,
            };
            counters.set_phase(Phase::Running);
            let admitted = admission.run();
            counters.set_phase(Phase::Stopping);
            let first_arrival = admission.first_arrival;
            rt.close_and_drain();
            drop(tx);
            // The sink thread flushes everything before it ends, and the
            // commit thread then commits everything acknowledged.
            let tally = sink_thread.join().expect("the sink thread does not panic");
            let committed = commit_thread
                .map(|t| t.join().expect("the commit thread does not panic"))
                .unwrap_or(Ok(()));
            let tally = tally.and_then(|summary| committed.map(|()| summary));

            // When both sides failed, the source's error is the cause: the
            // sink's follows from the stop it caused, so it is only logged.
            if let Err(e) = admitted {
                if let Err(sink) = tally {
                    let cause = std::error::Error::source(&sink).map(ToString::to_string);
                    tracing::warn!(
                        "after the source failed, the sink failed too: {sink}: {}",
                        cause.unwrap_or_default()
                    );
                }
                return Err(e);
            }
            let mut summary = tally?;
            summary.first_arrival = first_arrival;
            Ok(summary)
        })
    }
}

/// The source loop: takes a window slot, then a record, and submits it.
struct Admission<'r, 's> {
    rt: &'r Runtime,
    job: &'r Arc<Job>,
    source: &'s mut dyn Source,
    /// For a committing source: its tracker, and how much may be read and
    /// not yet committed.
    tracker: Option<(&'r Acks, ReplayBound)>,
    /// At least what the tracker holds uncommitted: what it held when
    /// this thread last looked, plus what it tracked since.
    held: Uncommitted,
    stop: &'r AtomicBool,
    config: &'r DriverConfig,
    tx: &'r Sender<Event>,
    first_arrival: Option<Instant>,
    /// Whether the sink thread orders each partition's results.
    ordered: bool,
    /// The epoch the sink thread asks for (exactly-once), the one the
    /// source was last rewound for (published for the sink thread), and
    /// the one records are admitted in now.
    epoch: &'r AtomicU64,
    rewound: &'r AtomicU64,
    admitting: u64,
    counters: &'r Counters,
    /// Records this segment's source has read (`counters` has every
    /// segment's).
    read: &'r AtomicU64,
    /// Exactly-once: the sink thread's transactional call under way, and
    /// when this thread last warned of one that lasted.
    in_call: Option<&'r sink::InCall>,
    warned: Option<Instant>,
    /// For a job that writes changelogs: what reads them back, and the
    /// epoch each partition's state was last restored in. A partition
    /// restores before its first record after it starts here (assigned
    /// or assigned again), and after every abort (a new epoch).
    restorer: Option<Box<dyn ChangelogReader>>,
    restored: HashMap<i32, u64>,
    /// When this thread last looked for partitions that moved away, to
    /// drop their state.
    looked_for_moved: Instant,
    /// The job's segment this source feeds.
    segment: usize,
    /// The largest output the sink takes (`Sink::output_limit`).
    output_limit: Option<usize>,
}

impl Admission<'_, '_> {
    fn run(&mut self) -> Result<(), DriverError> {
        let rt = self.rt;
        let stopping = || self.stop.load(Ordering::Relaxed) || rt.is_closed();
        while !stopping() {
            // After an aborted transaction: back to the last commit before
            // anything else, the replay bound's wait included (the sink
            // thread commits nothing until this rewind, so a full bound
            // would wait for ever). Acquire: pairs with the sink thread's
            // store after its abort.
            let asked = self.epoch.load(Ordering::Acquire);
            if asked != self.admitting {
                self.source.rewind().map_err(DriverError::Source)?;
                self.admitting = asked;
                // Release: the sink thread commits again only after this.
                self.rewound.store(asked, Ordering::Release);
            }
            self.forget_moved();
            if let Some((acks, bound)) = self.tracker {
                // Bounded replay: read on only while the bound admits
                // another record. The commit thread commits them. Only
                // this thread adds to what is uncommitted (commits,
                // releases and rewinds take away), so what it last saw
                // plus what it tracked since is never below the truth:
                // the tracker is asked again only once that says full.
                if !bound.admits(self.held) {
                    if !acks.wait_uncommitted_below(bound, self.config.poll_timeout) {
                        self.source.keep_alive().map_err(DriverError::Source)?;
                        self.warn_of_a_long_call();
                        continue;
                    }
                    self.held = acks.uncommitted();
                }
            } else if !self.unwritten_below(self.config.max_uncommitted) {
                // The sink thread writes within a linger; a backstop, so
                // a short sleep serves.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // The slot first: while the window is full, the source is not
            // read.
            let slot = match rt.reserve() {
                Ok(slot) => slot,
                Err(AdmitError::Closed) => break,
                Err(e) => return Err(e.into()),
            };
            let max = self.config.max_record_bytes;
            match self
                .source
                .poll(self.config.poll_timeout)
                .map_err(DriverError::Source)?
            {
                Polled::Record(envelope) if envelope.payload.len() as u64 > max => {
                    drop(slot);
                    let size = envelope.payload.len() as u64;
                    self.oversized(envelope, size);
                }
                Polled::Oversized(envelope, size) => {
                    drop(slot);
                    self.oversized(envelope, size);
                }
                Polled::Record(envelope) => {
                    let (input, origin) = self.take(envelope);
                    self.restore_maybe(origin.position.partition)?;
                    // Its places at the keyed stages, in the order read:
                    // this thread admits one record at a time.
                    let tickets = self.job.tickets(self.segment, origin.position.partition);
                    let outlet = Outlet::new(self.tx.clone(), &origin)
                        .with_tickets(tickets)
                        .with_output_limit(self.output_limit);
                    let done = self.tx.clone();
                    let counters = self.counters;
                    counters.submitted.store(
                        counters.submitted.load(Ordering::Relaxed) + 1,
                        Ordering::Relaxed,
                    );
                    slot.submit(
                        self.job.start(self.segment, input, outlet),
                        move |outcome| origin.done(&done, outcome),
                    );
                }
                Polled::Idle => drop(slot),
                Polled::End => {
                    drop(slot);
                    if self.job.has_windows() {
                        self.close_windows();
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// While the replay bound holds reading back: says so if the sink
    /// thread's transactional call has lasted [`sink::STUCK_WARNING`],
    /// and again as long after.
    fn warn_of_a_long_call(&mut self) {
        let Some(in_call) = self.in_call else {
            return;
        };
        let now = Instant::now();
        let Some((call, lasted)) = in_call.current(now) else {
            return;
        };
        let quiet = self.warned.map_or(true, |at| {
            now.saturating_duration_since(at) >= sink::STUCK_WARNING
        });
        if lasted >= sink::STUCK_WARNING && quiet {
            self.warned = Some(now);
            tracing::warn!(
                "the sink thread has been {call} for {}s; reading waits on the replay bound \
                 meanwhile",
                lasted.as_secs()
            );
        }
    }

    /// Takes in a record: counts and tracks it, and tells the sink thread
    /// of it when results are ordered.
    fn take(&mut self, envelope: Envelope) -> (Input, Origin) {
        self.first_arrival.get_or_insert(envelope.arrived);
        self.counters.read(envelope.payload.len() as u64);
        self.read.fetch_add(1, Ordering::Relaxed);
        if let Some((acks, _)) = self.tracker {
            self.held.records += 1;
            self.held.bytes += envelope.payload.len() as u64;
            if acks.track(envelope.position, envelope.payload.len()) {
                tracing::debug!(
                    segment = self.segment,
                    partition = envelope.position.partition,
                    offset = envelope.position.offset,
                    "the first record of a partition here"
                );
                // Started here: whatever state it had here may be stale.
                self.restored.remove(&envelope.position.partition);
            }
        }
        let (input, origin) = Input::from_envelope(envelope, self.admitting);
        if self.ordered {
            let _ = self.tx.send(Event::Admitted {
                position: origin.position,
                epoch: self.admitting,
            });
        }
        (input, origin)
    }

    /// Before a record of `partition` is admitted: restores the
    /// partition's durable state if it started here, or the transaction
    /// was aborted, since it was last restored.
    fn restore_maybe(&mut self, partition: i32) -> Result<(), DriverError> {
        let Some(reader) = self.restorer.as_deref_mut() else {
            return Ok(());
        };
        if self.restored.get(&partition) == Some(&self.admitting) {
            return Ok(());
        }
        let started = Instant::now();
        let read = self
            .job
            .restore(self.segment, partition, reader)
            .map_err(DriverError::Restore)?;
        self.counters.restored(read, started.elapsed());
        self.restored.insert(partition, self.admitting);
        Ok(())
    }

    /// Drops the state of partitions restored here that moved to another
    /// member (the tracker no longer knows them), once none of their
    /// records is still at a keyed stage: a process that held many
    /// partitions in turn would otherwise keep all their states. Should a
    /// partition come back, its first record restores it as for any
    /// partition that starts here. Looks once a second.
    fn forget_moved(&mut self) {
        let Some((acks, _)) = self.tracker else {
            return;
        };
        if self.restored.is_empty() || self.looked_for_moved.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.looked_for_moved = Instant::now();
        let live = acks.committed_offsets();
        let moved: Vec<i32> = self
            .restored
            .keys()
            .filter(|p| !live.contains_key(p))
            .copied()
            .collect();
        for partition in moved {
            if self.job.forget(self.segment, partition) {
                self.restored.remove(&partition);
                tracing::info!(
                    partition,
                    "state dropped: the partition moved to another member"
                );
            }
        }
    }

    /// A record over the size cap: dead-lettered with its first bytes and
    /// the reason, without running. It is tracked, acknowledged and
    /// committed like any other.
    fn oversized(&mut self, mut envelope: Envelope, size: u64) {
        envelope.payload.truncate(OVERSIZED_KEPT);
        let (_, origin) = self.take(envelope);
        // Counted whole.
        let kept = origin.payload.len() as u64;
        self.counters
            .input_bytes
            .fetch_add(size - kept.min(size), Ordering::Relaxed);
        let reason = format!(
            "record of {size} bytes is over the {} cap (--max-record-bytes); \
             the dead letter keeps its first {kept} bytes",
            Bytes(self.config.max_record_bytes)
        );
        tracing::warn!(
            partition = origin.position.partition,
            offset = origin.position.offset,
            "{reason}"
        );
        Outlet::new(self.tx.clone(), &origin).reject(reason);
        origin.done(self.tx, Ok(()));
    }

    /// Without a tracker (stdin, generate), whether records read and not
    /// yet written stay below the bound, so results held for order, or
    /// for a slow sink, take bounded memory. With one, the replay bound
    /// does this.
    fn unwritten_below(&self, bound: ReplayBound) -> bool {
        let read = self.counters.input_records.load(Ordering::Relaxed);
        let written = self.counters.messages.load(Ordering::Relaxed);
        read.saturating_sub(written) < bound.records
    }

    /// At the end of a bounded input: once every record has finished,
    /// closes the job's open windows on this thread.
    fn close_windows(&self) {
        while self.rt.in_flight() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.job.finish(self.tx, Instant::now());
    }
}
