//! The sink thread: writes results, flushes, acknowledges; and the reorder
//! buffer of `--ordered`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use fila_connectors::{Ack, Acks, Position, Sink};

use super::{DriverConfig, DriverError, RunSummary};
use crate::counters::Counters;
use crate::outlet::Event;
use crate::report::latency_histogram;

/// Where the sink thread acknowledges finished records, for a source that
/// commits: the source's tracker, and the commit thread, told how many
/// were acknowledged after each flush.
pub(super) struct Acking<'a> {
    pub(super) acks: &'a Acks,
    pub(super) acked: Sender<u64>,
}

/// The sink thread: writes results in batches of a tick, flushes each
/// batch, and only then acknowledges the records it finished.
pub(super) fn run(
    rx: Receiver<Event>,
    sink: Box<dyn Sink>,
    acking: Option<Acking<'_>>,
    counters: &Counters,
    config: &DriverConfig,
) -> Result<RunSummary, DriverError> {
    let mut out = Writer {
        sink,
        counters,
        tracked: acking.is_some(),
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
        if let Some(acking) = &acking {
            acking.acknowledge(out.finished.drain(..));
        }
    }
    let mut summary = out.summary;
    summary.messages = counters.messages.load(Ordering::Relaxed);
    summary.outputs = counters.outputs.load(Ordering::Relaxed);
    summary.dead_letters = counters.dead_letters.load(Ordering::Relaxed);
    summary.panicked = counters.panicked.load(Ordering::Relaxed);
    Ok(summary)
}

impl Acking<'_> {
    fn acknowledge(&self, finished: impl Iterator<Item = Position>) {
        let mut done = 0;
        for position in finished {
            match self.acks.ack(position) {
                Ack::Done => done += 1,
                // Its partition moved to another member while it ran.
                Ack::Released => {}
                Ack::Unknown => {
                    tracing::error!(?position, "a record finished twice or was never tracked")
                }
            }
        }
        if done > 0 {
            // Fails only once the commit thread stopped on an error, which
            // the driver reports.
            let _ = self.acked.send(done);
        }
    }
}

/// The sink side of the sink thread: writes results, and collects the
/// positions of finished records for acknowledgement after a flush.
struct Writer<'a> {
    sink: Box<dyn Sink>,
    counters: &'a Counters,
    /// Whether finished records are acknowledged (a committing source).
    tracked: bool,
    finished: Vec<Position>,
    summary: RunSummary,
}

impl Writer<'_> {
    fn write(&mut self, event: Event) -> Result<(), DriverError> {
        let (sink, counters, summary) = (&mut *self.sink, self.counters, &mut self.summary);
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
                counters.outputs.fetch_add(1, Ordering::Relaxed);
                let latency = done.saturating_duration_since(arrived);
                summary
                    .latencies_us
                    .saturating_record(latency.as_micros() as u64);
                counters.record_latency(latency);
                summary.last_done = summary.last_done.max(Some(done));
            }
            Event::Rejected {
                position: Some(position),
                key,
                payload,
                reason,
                at,
            } => {
                dead_letter(sink, position, key.as_deref(), &payload, &reason, counters)?;
                summary.last_done = summary.last_done.max(Some(at));
            }
            Event::Rejected {
                position: None,
                reason,
                ..
            } => {
                // A result of no record (a window closed at the end of
                // the input) failed: there is no input to dead-letter.
                counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason, "a result at the end of the input was dropped");
            }
            Event::Done { position, panic } => {
                if let Some(p) = panic {
                    let reason = format!("a stage panicked: {}", p.message);
                    let key = p.key.as_deref();
                    dead_letter(sink, position, key, &p.payload, &reason, counters)?;
                    counters.panicked.fetch_add(1, Ordering::Relaxed);
                    summary.last_done = summary.last_done.max(Some(Instant::now()));
                }
                counters.messages.fetch_add(1, Ordering::Relaxed);
                if self.tracked {
                    self.finished.push(position);
                }
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
    counters: &Counters,
) -> Result<(), DriverError> {
    counters.dead_letters.fetch_add(1, Ordering::Relaxed);
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
