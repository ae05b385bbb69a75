//! Connects a source and a sink to the runtime.
//!
//! The calling thread is the source loop: it takes a window slot *first*
//! and only then polls the source, so while the window is full nothing is
//! read. Each record becomes one runtime unit. Its stages emit results into
//! a channel, and its completion adds a `Done` marker behind them. One sink
//! thread writes results, flushes, and only then acknowledges the positions
//! of the records whose `Done` it has seen, and commits what the
//! acknowledgements allow.
//!
//! For a source that commits (Kafka), the loop also keeps the records read
//! but not yet committed below the window W before it reads another. A
//! crash replays only the uncommitted records, so at most W duplicates.
//! The sink thread commits once a quarter of W has been acknowledged since
//! the last commit (or after `commit_interval`), which keeps the loop from
//! waiting on commits while sparing the broker a write per flush.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fila_connectors::{Acks, Committer, ConnectorError, Polled, Position, Sink, Source};
use fila_runtime::{AdmitError, Outcome, Runtime};
use hdrhistogram::Histogram;

use crate::dataflow::{self, Job, Outlet, Rejected};
use crate::metrics::Live;
use crate::report::latency_histogram;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How long one poll of the source may wait for a record.
    pub poll_timeout: Duration,
    /// After waking for a result, the sink thread waits this long and then
    /// takes everything that arrived meanwhile. It keeps the sink's wake-ups
    /// to one per tick during a burst instead of one per record.
    pub sink_tick: Duration,
    /// With a committing source, acknowledged positions are committed once
    /// a quarter of the window has been acknowledged since the last commit,
    /// or once this long has passed with something to commit. Every commit
    /// is a write on the broker, so not one per flush.
    pub commit_interval: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            poll_timeout: Duration::from_millis(100),
            sink_tick: Duration::from_millis(2),
            commit_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("source failed: {0}")]
    Source(#[source] ConnectorError),
    #[error("sink failed: {0}")]
    Sink(#[source] ConnectorError),
    #[error("committing offsets failed: {0}")]
    Commit(#[source] ConnectorError),
    #[error("admission failed: {0}")]
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

enum Event {
    Output {
        payload: Vec<u8>,
        arrived: Instant,
        done: Instant,
    },
    Rejected {
        position: Position,
        payload: Arc<[u8]>,
        reason: String,
        at: Instant,
    },
    /// The record's unit completed: every result it emitted is ahead of
    /// this in the channel.
    Done {
        position: Position,
        panic: Option<(String, Arc<[u8]>)>,
    },
}

struct Emit {
    tx: Sender<Event>,
    position: Position,
    payload: Arc<[u8]>,
    arrived: Instant,
}

impl Outlet for Emit {
    fn output(self, payload: Vec<u8>) {
        // A send fails only once the sink thread has stopped on an error;
        // the record is then not acknowledged, and is replayed.
        let _ = self.tx.send(Event::Output {
            payload,
            arrived: self.arrived,
            done: Instant::now(),
        });
    }

    fn reject(self, reason: Rejected) {
        let _ = self.tx.send(Event::Rejected {
            position: self.position,
            payload: self.payload,
            reason: reason.0,
            at: Instant::now(),
        });
    }
}

/// Runs `job` over everything `source` yields (until it ends, `stop` is set
/// and the runtime closed, or an error), writes results to `sink`, and
/// commits acknowledged positions. Everything admitted is drained, flushed
/// and acknowledged before this returns, error or not. `live` counts
/// finished records as they finish, for a metrics endpoint.
#[allow(clippy::too_many_arguments)]
pub fn run<R: Send + 'static>(
    rt: &Runtime,
    job: Arc<Job<R>>,
    source: &mut dyn Source,
    sink: Box<dyn Sink>,
    acks: &Acks,
    live: &Live,
    stop: &AtomicBool,
    config: &DriverConfig,
) -> Result<RunSummary, DriverError> {
    let committer = source
        .committer()
        .map_err(DriverError::Source)?
        .map(|committer| Commits {
            committer,
            every: (rt.window() as u64 / 4).max(1),
            interval: config.commit_interval,
            acked_since: 0,
            last: Instant::now(),
        });
    let gate = committer.is_some().then(|| rt.window() as u64);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let sink_thread = std::thread::Builder::new()
            .name("fila-sink".into())
            .spawn_scoped(s, || {
                let result = sink_loop(rx, sink, committer, acks, live, config.sink_tick);
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
        // The sink thread flushes and commits everything before it ends.
        let tally = sink_thread.join().expect("the sink thread does not panic");

        let mut summary = tally?;
        admitted?;
        summary.first_arrival = first_arrival;
        Ok(summary)
    })
}

#[allow(clippy::too_many_arguments)]
fn admit_loop<R: Send + 'static>(
    rt: &Runtime,
    job: &Arc<Job<R>>,
    source: &mut dyn Source,
    acks: &Acks,
    uncommitted_limit: Option<u64>,
    stop: &AtomicBool,
    config: &DriverConfig,
    tx: &Sender<Event>,
    first_arrival: &mut Option<Instant>,
) -> Result<(), DriverError> {
    let stopping = || stop.load(Ordering::Relaxed) || rt.is_closed();
    while !stopping() {
        if let Some(limit) = uncommitted_limit {
            // Bounded replay: read on only while fewer than W records are
            // uncommitted. The sink thread commits after every flush.
            if !acks.wait_uncommitted_below(limit, config.poll_timeout) {
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
                acks.track(envelope.position);
                let payload: Arc<[u8]> = envelope.payload.into();
                let position = envelope.position;
                let outlet = Emit {
                    tx: tx.clone(),
                    position,
                    payload: payload.clone(),
                    arrived: envelope.arrived,
                };
                let done_tx = tx.clone();
                let kept = payload.clone();
                slot.submit(
                    dataflow::start(job.clone(), payload, outlet),
                    move |outcome: Outcome| {
                        let panic = outcome.err().map(|f| (f.message, kept));
                        let _ = done_tx.send(Event::Done { position, panic });
                    },
                );
            }
            Polled::Idle => drop(slot),
            Polled::End => break,
        }
    }
    Ok(())
}

/// When the sink thread commits.
struct Commits {
    committer: Box<dyn Committer>,
    /// Commit once this many records were acknowledged since the last one.
    every: u64,
    /// Or once this long has passed with something to commit.
    interval: Duration,
    acked_since: u64,
    last: Instant,
}

impl Commits {
    fn pending(&self) -> bool {
        self.acked_since > 0
    }

    fn due(&self) -> bool {
        self.acked_since >= self.every || (self.pending() && self.last.elapsed() >= self.interval)
    }

    fn commit(&mut self, acks: &Acks) -> Result<(), DriverError> {
        self.committer.commit(acks).map_err(DriverError::Commit)?;
        self.acked_since = 0;
        self.last = Instant::now();
        Ok(())
    }
}

fn sink_loop(
    rx: Receiver<Event>,
    mut sink: Box<dyn Sink>,
    mut commits: Option<Commits>,
    acks: &Acks,
    live: &Live,
    tick: Duration,
) -> Result<RunSummary, DriverError> {
    let mut summary = RunSummary {
        messages: 0,
        outputs: 0,
        dead_letters: 0,
        panicked: 0,
        first_arrival: None,
        last_done: None,
        latencies_us: latency_histogram(),
    };
    let mut batch = Vec::new();
    let mut finished = Vec::new();
    loop {
        // With acknowledgements waiting to be committed, wake up in time to
        // commit them even if no further result comes.
        let first = match commits.as_ref().filter(|c| c.pending()) {
            Some(c) => match rx.recv_timeout(c.interval) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(event) => Some(event),
                Err(_) => break,
            },
        };
        let Some(first) = first else {
            if let Some(c) = commits.as_mut().filter(|c| c.due()) {
                c.commit(acks)?;
            }
            continue;
        };
        batch.push(first);
        if !tick.is_zero() {
            std::thread::sleep(tick);
        }
        batch.extend(rx.try_iter());
        for event in batch.drain(..) {
            match event {
                Event::Output {
                    payload,
                    arrived,
                    done,
                } => {
                    sink.send(&payload).map_err(DriverError::Sink)?;
                    live.outputs.fetch_add(1, Ordering::Relaxed);
                    let latency = done.saturating_duration_since(arrived).as_micros() as u64;
                    summary.latencies_us.saturating_record(latency);
                    summary.last_done = summary.last_done.max(Some(done));
                }
                Event::Rejected {
                    position,
                    payload,
                    reason,
                    at,
                } => {
                    dead_letter(&mut *sink, position, &payload, &reason, live)?;
                    summary.last_done = summary.last_done.max(Some(at));
                }
                Event::Done { position, panic } => {
                    if let Some((message, payload)) = panic {
                        let reason = format!("a stage panicked: {message}");
                        dead_letter(&mut *sink, position, &payload, &reason, live)?;
                        live.panicked.fetch_add(1, Ordering::Relaxed);
                        summary.last_done = summary.last_done.max(Some(Instant::now()));
                    }
                    live.messages.fetch_add(1, Ordering::Relaxed);
                    finished.push(position);
                }
            }
        }
        // Acknowledge only what the destination has confirmed.
        sink.flush().map_err(DriverError::Sink)?;
        for position in finished.drain(..) {
            if !acks.ack(position) {
                tracing::error!(?position, "a record finished twice or was never tracked");
            }
            if let Some(c) = commits.as_mut() {
                c.acked_since += 1;
            }
        }
        if let Some(c) = commits.as_mut().filter(|c| c.due()) {
            c.commit(acks)?;
        }
    }
    // Everything admitted has been flushed and acknowledged: commit it all.
    if let Some(c) = commits.as_mut().filter(|c| c.pending()) {
        c.commit(acks)?;
    }
    summary.messages = live.messages.load(Ordering::Relaxed);
    summary.outputs = live.outputs.load(Ordering::Relaxed);
    summary.dead_letters = live.dead_letters.load(Ordering::Relaxed);
    summary.panicked = live.panicked.load(Ordering::Relaxed);
    Ok(summary)
}

fn dead_letter(
    sink: &mut dyn Sink,
    position: Position,
    payload: &[u8],
    reason: &str,
    live: &Live,
) -> Result<(), DriverError> {
    live.dead_letters.fetch_add(1, Ordering::Relaxed);
    if sink.has_dead_letter_destination() {
        sink.dead_letter(position, payload, reason)
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
