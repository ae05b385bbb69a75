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
//! its last stage is done, but stays uncommitted for a sink tick, a
//! produce and a commit after that.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fila_connectors::{
    Ack, Acks, Committer, ConnectorError, Polled, Position, ReplayBound, Sink, Source,
};
use fila_runtime::{AdmitError, Outcome, Runtime};
use hdrhistogram::Histogram;

use crate::dataflow::{Input, Job, Outlet};
use crate::metrics::Live;
use crate::report::latency_histogram;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How long one poll of the source may wait for a record.
    pub poll_timeout: Duration,
    /// After waking for a result, the sink thread waits this long and then
    /// takes everything that arrived meanwhile, writes it, and flushes once.
    /// With Kafka every flush is a produce request that every in-sync
    /// replica must acknowledge, so the tick sets how many requests the
    /// broker serves: [`DEFAULT_SINK_TICK`] says why it is 25 ms.
    pub sink_tick: Duration,
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
}

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

/// The sink's default tick. With Kafka on the 2-core build machine, where
/// the broker shares the cores with fila, going from 2 ms to 25 ms cut the
/// broker's CPU per message by about 40% at a 10,000-record burst (0.29 to
/// 0.37 ms, against 0.53 to 0.61) and left fila that CPU, so efficiency rose at 1,000 records
/// (README, "`fila load` against `fila run --source kafka`"). An output
/// waits up to one tick longer for its flush; the latency a run reports is
/// taken when the record's last stage finishes, before the sink.
pub const DEFAULT_SINK_TICK: Duration = Duration::from_millis(25);

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            poll_timeout: Duration::from_millis(100),
            sink_tick: DEFAULT_SINK_TICK,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_uncommitted: DEFAULT_REPLAY_BOUND,
            ordered: false,
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

pub(crate) enum Event {
    /// With `ordered`: a record was admitted. Sent by the admitting thread
    /// before the record is submitted, so it precedes all of its results.
    Admitted(Position),
    Output {
        /// `None` for a result of no record (windows closed at the end).
        position: Option<Position>,
        key: Option<Arc<[u8]>>,
        payload: Vec<u8>,
        arrived: Instant,
        done: Instant,
    },
    Rejected {
        position: Option<Position>,
        key: Option<Arc<[u8]>>,
        payload: Arc<[u8]>,
        reason: String,
        at: Instant,
    },
    /// The record's unit completed: every result it emitted is ahead of
    /// this in the channel.
    Done {
        position: Position,
        panic: Option<Panicked>,
    },
}

/// A record whose stage panicked, kept to dead-letter it.
pub(crate) struct Panicked {
    message: String,
    key: Option<Arc<[u8]>>,
    payload: Arc<[u8]>,
}

/// Runs `job` over everything `source` yields (until it ends, `stop` is set
/// and the runtime closed, or an error), writes results to `sink`, and
/// commits acknowledged positions. Everything admitted is drained, flushed
/// and acknowledged before this returns, error or not. `live` counts
/// finished records as they finish, for a metrics endpoint.
#[allow(clippy::too_many_arguments)]
pub fn run(
    rt: &Runtime,
    job: Arc<Job>,
    source: &mut dyn Source,
    sink: Box<dyn Sink>,
    acks: &Acks,
    live: &Live,
    stop: &AtomicBool,
    config: &DriverConfig,
) -> Result<RunSummary, DriverError> {
    let bound = config.max_uncommitted;
    let committer = source
        .committer()
        .map_err(DriverError::Source)?
        .map(|committer| Commits {
            committer,
            interval: config.commit_interval,
            urgent: bound.scaled(1, 2),
            pending: false,
            last: Instant::now(),
        });
    let gate = committer.is_some().then_some(bound);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let (acked_tx, commit_thread) = match committer {
            Some(commits) => {
                let (acked_tx, acked_rx) = mpsc::channel();
                let thread = std::thread::Builder::new()
                    .name("fila-commit".into())
                    .spawn_scoped(s, move || {
                        let result = commit_loop(acked_rx, commits, acks);
                        if result.is_err() {
                            // Nothing more can be committed: stop reading.
                            rt.close();
                        }
                        result
                    })
                    .expect("spawning the commit thread");
                (Some(acked_tx), Some(thread))
            }
            None => (None, None),
        };
        let sink_thread = std::thread::Builder::new()
            .name("fila-sink".into())
            .spawn_scoped(s, move || {
                let result = sink_loop(rx, sink, acked_tx, acks, live, config);
                if result.is_err() {
                    // Stop taking records in: nothing more can be delivered.
                    rt.close();
                }
                result
            })
            .expect("spawning the sink thread");

        let mut first_arrival = None;
        let admitted = admit_loop(
            rt,
            &job,
            source,
            acks,
            gate,
            stop,
            config,
            &tx,
            &mut first_arrival,
        );
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

#[allow(clippy::too_many_arguments)]
fn admit_loop(
    rt: &Runtime,
    job: &Arc<Job>,
    source: &mut dyn Source,
    acks: &Acks,
    replay_bound: Option<ReplayBound>,
    stop: &AtomicBool,
    config: &DriverConfig,
    tx: &Sender<Event>,
    first_arrival: &mut Option<Instant>,
) -> Result<(), DriverError> {
    let stopping = || stop.load(Ordering::Relaxed) || rt.is_closed();
    while !stopping() {
        if let Some(bound) = replay_bound {
            // Bounded replay: read on only while the bound admits another
            // record. The commit thread commits them.
            if !acks.wait_uncommitted_below(bound, config.poll_timeout) {
                source.keep_alive().map_err(DriverError::Source)?;
                continue;
            }
        }
        // The slot first: while the window is full, the source is not read.
        let slot = match rt.reserve() {
            Ok(slot) => slot,
            Err(AdmitError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        match source
            .poll(config.poll_timeout)
            .map_err(DriverError::Source)?
        {
            Polled::Record(envelope) => {
                first_arrival.get_or_insert(envelope.arrived);
                acks.track(envelope.position, envelope.payload.len());
                let payload: Arc<[u8]> = envelope.payload.into();
                let key: Option<Arc<[u8]>> = envelope.key.map(Into::into);
                let position = envelope.position;
                let outlet = Outlet {
                    tx: tx.clone(),
                    position: Some(position),
                    key: key.clone(),
                    payload: payload.clone(),
                    arrived: envelope.arrived,
                };
                let input = Input {
                    payload: payload.clone(),
                    key: key.clone(),
                    headers: envelope.headers,
                    timestamp: envelope.timestamp,
                    position,
                };
                if config.ordered {
                    let _ = tx.send(Event::Admitted(position));
                }
                let done_tx = tx.clone();
                slot.submit(job.start(input, outlet), move |outcome: Outcome| {
                    let panic = outcome.err().map(|f| Panicked {
                        message: f.message,
                        key,
                        payload,
                    });
                    let _ = done_tx.send(Event::Done { position, panic });
                });
            }
            Polled::Idle => drop(slot),
            Polled::End => {
                drop(slot);
                if job.has_windows() {
                    close_windows(rt, job, tx);
                }
                break;
            }
        }
    }
    Ok(())
}

/// At the end of a bounded input: once every record has finished, closes
/// the job's open windows on this thread.
fn close_windows(rt: &Runtime, job: &Job, tx: &Sender<Event>) {
    while rt.in_flight() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    job.finish(tx, Instant::now());
}

/// When the commit thread commits.
struct Commits {
    committer: Box<dyn Committer>,
    /// Commit this often while something is acknowledged and not
    /// committed.
    interval: Duration,
    /// Or at once when this much is uncommitted: half the replay bound,
    /// so a source near the bound does not wait out the interval.
    urgent: ReplayBound,
    /// Whether something was acknowledged since the last commit, or a
    /// commit was refused and must be offered again.
    pending: bool,
    last: Instant,
}

impl Commits {
    fn due(&self, acks: &Acks) -> bool {
        self.pending
            && (self.last.elapsed() >= self.interval || !self.urgent.admits(acks.uncommitted()))
    }

    fn commit(&mut self, acks: &Acks) -> Result<(), DriverError> {
        self.committer.commit(acks).map_err(DriverError::Commit)?;
        // A commit the broker refused for now (a group rebalancing) leaves
        // its offsets committable: keep them pending, so they are offered
        // again after `interval` even if no record is acknowledged
        // meanwhile. With the replay bound full, none would be.
        self.pending = !acks.committable().is_empty();
        self.last = Instant::now();
        Ok(())
    }
}

/// The commit thread: `acked` brings how many records the sink thread
/// acknowledged in each batch. It ends when the sink thread does, after
/// committing everything acknowledged.
fn commit_loop(acked: Receiver<u64>, mut commits: Commits, acks: &Acks) -> Result<(), DriverError> {
    loop {
        // With acknowledgements waiting, wake in time to commit them even
        // if no more come.
        let received = if commits.pending {
            let left = commits.interval.saturating_sub(commits.last.elapsed());
            acked.recv_timeout(left)
        } else {
            acked
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        match received {
            Ok(n) => commits.pending |= n > 0,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        commits.pending |= acked.try_iter().any(|n| n > 0);
        if commits.due(acks) {
            commits.commit(acks)?;
        }
    }
    if commits.pending {
        commits.commit(acks)?;
    }
    Ok(())
}

fn sink_loop(
    rx: Receiver<Event>,
    sink: Box<dyn Sink>,
    acked: Option<Sender<u64>>,
    acks: &Acks,
    live: &Live,
    config: &DriverConfig,
) -> Result<RunSummary, DriverError> {
    let mut out = Writer {
        sink,
        live,
        finished: Vec::new(),
        summary: RunSummary {
            messages: 0,
            outputs: 0,
            dead_letters: 0,
            panicked: 0,
            first_arrival: None,
            last_done: None,
            latencies_us: latency_histogram(),
        },
    };
    let mut reorder = config.ordered.then(Reorder::default);
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        if !config.sink_tick.is_zero() {
            std::thread::sleep(config.sink_tick);
        }
        batch.extend(rx.try_iter());
        for event in batch.drain(..) {
            match reorder.as_mut() {
                Some(reorder) => reorder.push(event, &mut out)?,
                None => out.write(event)?,
            }
        }
        // Acknowledge only what the destination has confirmed.
        out.sink.flush().map_err(DriverError::Sink)?;
        let mut done = 0;
        for position in out.finished.drain(..) {
            match acks.ack(position) {
                Ack::Done => done += 1,
                // Its partition moved to another member while it ran.
                Ack::Released => {}
                Ack::Unknown => {
                    tracing::error!(?position, "a record finished twice or was never tracked")
                }
            }
        }
        if let Some(acked) = acked.as_ref().filter(|_| done > 0) {
            // Fails only once the commit thread stopped on an error, which
            // the driver reports.
            let _ = acked.send(done);
        }
    }
    let mut summary = out.summary;
    summary.messages = live.messages.load(Ordering::Relaxed);
    summary.outputs = live.outputs.load(Ordering::Relaxed);
    summary.dead_letters = live.dead_letters.load(Ordering::Relaxed);
    summary.panicked = live.panicked.load(Ordering::Relaxed);
    Ok(summary)
}

/// The sink side of the sink thread: writes results, and collects the
/// positions of finished records for acknowledgement after a flush.
struct Writer<'a> {
    sink: Box<dyn Sink>,
    live: &'a Live,
    finished: Vec<Position>,
    summary: RunSummary,
}

impl Writer<'_> {
    fn write(&mut self, event: Event) -> Result<(), DriverError> {
        let (sink, live, summary) = (&mut *self.sink, self.live, &mut self.summary);
        match event {
            Event::Admitted(_) => {}
            Event::Output {
                key,
                payload,
                arrived,
                done,
                ..
            } => {
                sink.send(key.as_deref(), &payload)
                    .map_err(DriverError::Sink)?;
                live.outputs.fetch_add(1, Ordering::Relaxed);
                let latency = done.saturating_duration_since(arrived);
                summary
                    .latencies_us
                    .saturating_record(latency.as_micros() as u64);
                live.record_latency(latency);
                summary.last_done = summary.last_done.max(Some(done));
            }
            Event::Rejected {
                position: Some(position),
                key,
                payload,
                reason,
                at,
            } => {
                dead_letter(sink, position, key.as_deref(), &payload, &reason, live)?;
                summary.last_done = summary.last_done.max(Some(at));
            }
            Event::Rejected {
                position: None,
                reason,
                ..
            } => {
                // A result of no record (a window closed at the end of
                // the input) failed: there is no input to dead-letter.
                live.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason, "a result at the end of the input was dropped");
            }
            Event::Done { position, panic } => {
                if let Some(p) = panic {
                    let reason = format!("a stage panicked: {}", p.message);
                    let key = p.key.as_deref();
                    dead_letter(sink, position, key, &p.payload, &reason, live)?;
                    live.panicked.fetch_add(1, Ordering::Relaxed);
                    summary.last_done = summary.last_done.max(Some(Instant::now()));
                }
                live.messages.fetch_add(1, Ordering::Relaxed);
                self.finished.push(position);
            }
        }
        Ok(())
    }
}

/// The reorder buffer of `ordered`: per partition, the records admitted
/// and not yet written, in admission order, each with its results so far.
/// The front record's results are written once it is done, then the next.
#[derive(Default)]
struct Reorder {
    partitions: HashMap<i32, VecDeque<Held>>,
}

struct Held {
    offset: i64,
    events: Vec<Event>,
    done: bool,
}

impl Reorder {
    fn push(&mut self, event: Event, out: &mut Writer<'_>) -> Result<(), DriverError> {
        let position = match &event {
            Event::Admitted(p) => {
                let held = Held {
                    offset: p.offset,
                    events: Vec::new(),
                    done: false,
                };
                self.partitions
                    .entry(p.partition)
                    .or_default()
                    .push_back(held);
                return Ok(());
            }
            Event::Output { position, .. } | Event::Rejected { position, .. } => *position,
            Event::Done { position, .. } => Some(*position),
        };
        let Some(position) = position else {
            // A result of no record has no place in any order.
            return out.write(event);
        };
        let queue = self.partitions.entry(position.partition).or_default();
        // Admission order is offset order within a partition; a partition
        // read again after a rebalance can hold one offset twice, and the
        // earlier of them not yet done is this one.
        let from = queue.partition_point(|h| h.offset < position.offset);
        let Some(held) = queue
            .range_mut(from..)
            .find(|h| h.offset == position.offset && !h.done)
        else {
            // Not admitted through this buffer: nothing to wait for.
            return out.write(event);
        };
        let done = matches!(event, Event::Done { .. });
        held.events.push(event);
        held.done = done;
        let mut released = None;
        while queue.front().is_some_and(|h| h.done) {
            let held = queue.pop_front().expect("the front is there");
            // An output's latency includes its wait in the buffer.
            let now = *released.get_or_insert_with(Instant::now);
            for mut event in held.events {
                if let Event::Output { done, .. } = &mut event {
                    *done = (*done).max(now);
                }
                out.write(event)?;
            }
        }
        Ok(())
    }
}

fn dead_letter(
    sink: &mut dyn Sink,
    position: Position,
    key: Option<&[u8]>,
    payload: &[u8],
    reason: &str,
    live: &Live,
) -> Result<(), DriverError> {
    live.dead_letters.fetch_add(1, Ordering::Relaxed);
    if sink.has_dead_letter_destination() {
        sink.dead_letter(position, key, payload, reason)
            .map_err(DriverError::Sink)
    } else {
        tracing::warn!(
            partition = position.partition,
            offset = position.offset,
            reason,
            "bad record skipped (no dead-letter destination)"
        );
        Ok(())
    }
}
