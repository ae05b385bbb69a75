//! What a record's stages send to the sink thread, and the handle they
//! send it through. A leaf module: the dataflow sends these, the driver
//! receives them, and neither needs the other to do so.

use std::any::Any;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use fila_connectors::{Envelope, Position};
use fila_runtime::Outcome;

use crate::order::Ticket;

/// A message from a record's tasks to the sink thread. Each carries the
/// epoch its record was admitted in: under exactly-once, an aborted
/// transaction starts a new epoch, and what older records send is dropped
/// (the source reads them again).
pub(crate) enum Event {
    /// With `--ordered` (and exactly-once): a record was admitted. Sent by
    /// the admitting thread before the record is submitted, so it precedes
    /// all of its results.
    Admitted { position: Position, epoch: u64 },
    Output {
        epoch: u64,
        /// `None` for a result of no record (windows closed at the end).
        position: Option<Position>,
        key: Option<Arc<[u8]>>,
        /// Whether the job gave the output its key (`sink_keyed`), rather
        /// than it keeping its input record's: only such outputs
        /// supersede each other under `--latest-per-key`.
        own_key: bool,
        payload: Vec<u8>,
        arrived: Instant,
        done: Instant,
    },
    Rejected {
        epoch: u64,
        position: Option<Position>,
        key: Option<Arc<[u8]>>,
        payload: Arc<[u8]>,
        reason: String,
        at: Instant,
    },
    /// A record of one of the job's own topics: a keyed stage's
    /// changelog (on the partition of the input partition the state
    /// belongs to), or a repartition topic (partitioned by its key).
    /// Written, flushed and (exactly-once) committed with the record's
    /// outputs.
    Internal {
        epoch: u64,
        position: Option<Position>,
        topic: Arc<str>,
        /// `None`: the partition its key hashes to.
        partition: Option<i32>,
        /// A changelog's record: the topic is compacted, so of a key's
        /// records only the last one matters.
        compacted: bool,
        key: Vec<u8>,
        /// `None`: a tombstone, the key was deleted.
        value: Option<Vec<u8>>,
    },
    /// A record for a repartition topic whose keyed stage combines
    /// (`reduce_combined`): held by the sink thread until the end of its
    /// batch, the batch's later records of its key folded into it, and
    /// then written as an `Internal` record would be (at once, when the
    /// function refuses the next record of its key).
    Combined {
        epoch: u64,
        position: Option<Position>,
        topic: Arc<str>,
        key: Vec<u8>,
        /// The job's record, not yet encoded.
        value: Box<dyn Any + Send>,
        combiner: Arc<dyn Combiner>,
    },
    /// The record's unit completed: every result it emitted is ahead of
    /// this in the channel.
    Done {
        epoch: u64,
        position: Position,
        panic: Option<Panicked>,
    },
}

/// What the sink thread counts a not yet encoded record of a combining
/// repartition as, to size its batches.
const COMBINED_RECORD_BYTES: usize = 16;

/// Folds the records of one key bound for a repartition topic into one
/// before they are written, with the keyed stage's own (associative)
/// function; the type-erased side of `reduce_combined`.
pub(crate) trait Combiner: Send + Sync {
    /// Folds `next` into `held`, both of one key, `held` the earlier.
    /// Gives `next` back when the function failed or panicked: the two
    /// are then written apart, and the keyed stage applies each as it
    /// applies any record.
    fn combine(
        &self,
        held: &mut Box<dyn Any + Send>,
        next: Box<dyn Any + Send>,
    ) -> Result<(), Box<dyn Any + Send>>;

    /// The record as the repartition topic holds it; an error when it
    /// does not serialize (a bug of the job).
    fn encode(&self, value: &(dyn Any + Send)) -> Result<Vec<u8>, String>;
}

/// The epoch of results of no record (windows closed at the end of a
/// bounded input): never older than any other.
pub(crate) const NO_RECORD_EPOCH: u64 = u64::MAX;

impl Event {
    pub(crate) fn epoch(&self) -> u64 {
        match self {
            Event::Admitted { epoch, .. }
            | Event::Output { epoch, .. }
            | Event::Rejected { epoch, .. }
            | Event::Internal { epoch, .. }
            | Event::Combined { epoch, .. }
            | Event::Done { epoch, .. } => *epoch,
        }
    }

    /// About how many bytes the sink writes for this event: the sink
    /// thread sizes its batches by it.
    pub(crate) fn bytes(&self) -> usize {
        let key = |k: &Option<Arc<[u8]>>| k.as_ref().map_or(0, |k| k.len());
        match self {
            Event::Admitted { .. } => 0,
            Event::Output {
                key: k, payload, ..
            } => key(k) + payload.len(),
            Event::Rejected {
                key: k, payload, ..
            } => key(k) + payload.len(),
            Event::Internal { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len),
            // Not encoded yet: its key and about a small record's worth.
            Event::Combined { key, .. } => key.len() + COMBINED_RECORD_BYTES,
            Event::Done { panic, .. } => {
                panic.as_ref().map_or(0, |p| key(&p.key) + p.payload.len())
            }
        }
    }
}

/// A record whose stage panicked, kept to dead-letter it.
pub(crate) struct Panicked {
    pub(crate) message: String,
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) payload: Arc<[u8]>,
}

/// A record as it entered the pipeline: what its outputs, its dead letter
/// and its completion carry. Shares its bytes with the record's `Input`.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) position: Position,
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) arrived: Instant,
    pub(crate) epoch: u64,
}

impl Origin {
    pub(crate) fn of(
        envelope: &Envelope,
        key: Option<Arc<[u8]>>,
        payload: Arc<[u8]>,
        epoch: u64,
    ) -> Origin {
        Origin {
            position: envelope.position,
            key,
            payload,
            arrived: envelope.arrived,
            epoch,
        }
    }

    /// Reports the record's unit completed with `outcome`, behind every
    /// result it sent.
    pub(crate) fn done(self, tx: &Sender<Event>, outcome: Outcome) {
        let panic = outcome.err().map(|f| Panicked {
            message: f.message,
            key: self.key,
            payload: self.payload,
        });
        // Fails only once the sink thread has stopped on an error.
        let _ = tx.send(Event::Done {
            epoch: self.epoch,
            position: self.position,
            panic,
        });
    }
}

/// Where a record's results go, carried along its stages. Cloned for each
/// output of a `flat_map`.
#[derive(Clone)]
pub(crate) struct Outlet {
    tx: Sender<Event>,
    /// `None` for results that belong to no record: windows closed at the
    /// end of a bounded input.
    position: Option<Position>,
    key: Option<Arc<[u8]>>,
    payload: Arc<[u8]>,
    arrived: Instant,
    epoch: u64,
    /// The record's places at the keyed stages it has yet to reach
    /// (`order.rs`); empty when the job has none, or off the driver.
    tickets: Tickets,
    /// The largest output (key and payload) the sink takes.
    output_limit: usize,
}

/// A record's places at keyed stages. Most jobs have one keyed stage or
/// none, and a `flat_map` clones the outlet per output: one place is kept
/// inline, so that such a clone allocates nothing.
#[derive(Clone, Default)]
pub(crate) enum Tickets {
    #[default]
    None,
    One(Arc<Ticket>),
    Many(Vec<Arc<Ticket>>),
}

impl Tickets {
    pub(crate) fn of(mut tickets: Vec<Arc<Ticket>>) -> Tickets {
        match tickets.len() {
            0 => Tickets::None,
            1 => Tickets::One(tickets.pop().expect("one ticket")),
            _ => Tickets::Many(tickets),
        }
    }

    fn take(&mut self, stage: usize) -> Option<Arc<Ticket>> {
        match self {
            Tickets::None => None,
            Tickets::One(t) if t.stage() == stage => {
                let Tickets::One(t) = std::mem::take(self) else {
                    unreachable!("matched One just above")
                };
                Some(t)
            }
            Tickets::One(_) => None,
            Tickets::Many(all) => {
                let at = all.iter().position(|t| t.stage() == stage)?;
                Some(all.swap_remove(at))
            }
        }
    }
}

impl Outlet {
    /// The outlet of the record `origin`.
    pub(crate) fn new(tx: Sender<Event>, origin: &Origin) -> Outlet {
        Outlet {
            tx,
            position: Some(origin.position),
            key: origin.key.clone(),
            payload: origin.payload.clone(),
            arrived: origin.arrived,
            epoch: origin.epoch,
            tickets: Tickets::None,
            output_limit: usize::MAX,
        }
    }

    /// With the largest output the sink takes ([`Sink::output_limit`]):
    /// a record with a larger output is dead-lettered.
    ///
    /// [`Sink::output_limit`]: fila_connectors::Sink::output_limit
    pub(crate) fn with_output_limit(mut self, limit: Option<usize>) -> Outlet {
        self.output_limit = limit.unwrap_or(usize::MAX);
        self
    }

    /// With the record's places at the job's keyed stages.
    pub(crate) fn with_tickets(mut self, tickets: Tickets) -> Outlet {
        self.tickets = tickets;
        self
    }

    /// Takes this copy's place at keyed stage `stage`, if it has one.
    pub(crate) fn take_ticket(&mut self, stage: usize) -> Option<Arc<Ticket>> {
        self.tickets.take(stage)
    }

    /// An outlet for results of no record (windows closed at the end of
    /// the input), counted from `arrived`.
    pub(crate) fn of_no_record(tx: Sender<Event>, arrived: Instant) -> Outlet {
        Outlet {
            tx,
            position: None,
            key: None,
            payload: Arc::from(&[][..]),
            arrived,
            epoch: NO_RECORD_EPOCH,
            tickets: Tickets::None,
            output_limit: usize::MAX,
        }
    }

    pub(crate) fn partition(&self) -> i32 {
        self.position.map_or(0, |p| p.partition)
    }

    /// Sends one output with `key`, or with the record's own key when it
    /// is `None`. An output larger than the sink takes dead-letters the
    /// record instead (its other outputs are written).
    pub(crate) fn output(self, key: Option<Arc<[u8]>>, payload: Vec<u8>) {
        let size = key.as_ref().or(self.key.as_ref()).map_or(0, |k| k.len()) + payload.len();
        if size > self.output_limit {
            self.reject(format!(
                "an output of {size} bytes (key and value) is larger than the {} bytes the \
                 output topic takes",
                self.output_limit
            ));
            return;
        }
        // A send fails only once the sink thread has stopped on an error;
        // the record is then not acknowledged, and is replayed.
        let _ = self.tx.send(Event::Output {
            epoch: self.epoch,
            position: self.position,
            own_key: key.is_some(),
            key: key.or(self.key),
            payload,
            arrived: self.arrived,
            done: Instant::now(),
        });
    }

    /// Sends a record of a keyed stage's changelog, `topic`, for the
    /// state of this record's input partition (`None`: the key was
    /// deleted): written with the record's outputs, before its position
    /// is acknowledged.
    pub(crate) fn changelog(&self, topic: &Arc<str>, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.internal(topic, Some(self.partition()), true, key, value);
    }

    /// Sends the record on through repartition topic `topic`, under `key`
    /// (the partition the key hashes to): written with the record's
    /// outputs, before its position is acknowledged.
    pub(crate) fn repartition(&self, topic: &Arc<str>, key: Vec<u8>, record: Vec<u8>) {
        self.internal(topic, None, false, key, Some(record));
    }

    /// Sends the record on through repartition topic `topic`, under
    /// `key`, to be combined with the other records of its key in the
    /// sink thread's batch before it is written.
    pub(crate) fn repartition_combined(
        &self,
        topic: &Arc<str>,
        key: Vec<u8>,
        record: Box<dyn Any + Send>,
        combiner: &Arc<dyn Combiner>,
    ) {
        let _ = self.tx.send(Event::Combined {
            epoch: self.epoch,
            position: self.position,
            topic: topic.clone(),
            key,
            value: record,
            combiner: combiner.clone(),
        });
    }

    fn internal(
        &self,
        topic: &Arc<str>,
        partition: Option<i32>,
        compacted: bool,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) {
        let _ = self.tx.send(Event::Internal {
            epoch: self.epoch,
            position: self.position,
            topic: topic.clone(),
            partition,
            compacted,
            key,
            value,
        });
    }

    /// Sends the record to the dead-letter destination with `reason`.
    pub(crate) fn reject(&self, reason: String) {
        let _ = self.tx.send(Event::Rejected {
            epoch: self.epoch,
            position: self.position,
            key: self.key.clone(),
            payload: self.payload.clone(),
            reason,
            at: Instant::now(),
        });
    }

    /// Reports a failure of no record's (a window closed at the end).
    pub(crate) fn reject_no_record(tx: &Sender<Event>, reason: String) {
        let _ = tx.send(Event::Rejected {
            epoch: NO_RECORD_EPOCH,
            position: None,
            key: None,
            payload: Arc::from(&[][..]),
            reason,
            at: Instant::now(),
        });
    }
}
