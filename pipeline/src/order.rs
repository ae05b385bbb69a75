//! Input order at keyed stages: the records of one input partition apply
//! to a keyed stage in the order they were read, while every stateless
//! stage, and every other partition, runs in parallel on any worker.
//!
//! At admission, the driver numbers the record in its partition and gives
//! it a [`Ticket`] per keyed stage: its place in the partition's order at
//! that stage. The ticket travels in the record's [`Outlet`], one copy per
//! `flat_map` output. When a copy reaches the stage, the record applies
//! there at once if every record read before it from its partition has
//! *passed* the stage; otherwise it waits, parked with a held follow-on of
//! its own unit (`fila_runtime::TaskCx::hold`), so that no worker waits
//! with it. A record passes a stage once every copy of its ticket has
//! either reached the stage or been dropped (the record was filtered out,
//! dead-lettered, or its task panicked before the stage). Whoever brings
//! the oldest record of a partition past the stage applies the parked
//! records that are now first, in order, and starts their held follow-ons
//! to carry on.
//!
//! Why it cannot deadlock, what it costs and why whole partitions rather
//! than single keys are sequenced: docs/design/state.md#order.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;
use fila_connectors::{ChangelogReader, Restore};
use fila_runtime::Held;
use parking_lot::Mutex;

use crate::dataflow::{Exec, Finish, Parts};
use crate::outlet::Outlet;

/// Lock stripes per keyed stage: a partition's lane lives in one of them.
const STRIPES: usize = 64;

/// A keyed stage's work, applied in input order per partition by
/// [`InOrder`].
pub(crate) trait Step<T>: Send + Sync + 'static {
    /// What one input partition keeps at this stage.
    type Lane: Send + 'static;
    /// What applying a record hands on to `then`.
    type Then: Send + 'static;

    /// A partition's lane, when its first record arrives.
    fn lane(&self) -> Self::Lane;

    /// Applies `record`, read from `partition`, to the partition's lane.
    /// Runs under the lane's lock, in the partition's input order: keep it
    /// short, and leave the lane as it was if it fails or panics.
    fn apply(&self, lane: &mut Self::Lane, partition: i32, record: T, out: &Outlet) -> Self::Then;

    /// Carries on with what `apply` returned, outside the lock, as a task
    /// of the record's unit.
    fn then(&self, then: Self::Then, out: Outlet, exec: &mut Exec<'_, '_>);

    /// What the end of a bounded input hands on from a lane (windows
    /// closed), if this stage keeps anything to the end.
    fn close(&self, _lane: &mut Self::Lane) -> Option<Self::Then> {
        None
    }

    /// For a keyed stage: its name, and its changelog topic once the job
    /// runs where it has one.
    fn changelog(&self) -> Option<(&str, &OnceLock<Arc<str>>)> {
        None
    }

    /// Makes room in a lane about to be restored for up to `records`
    /// keys.
    fn reserve(&self, _lane: &mut Self::Lane, _records: u64) {}

    /// Called once a lane is restored, before it is used.
    fn restored(&self, _lane: &mut Self::Lane) {}

    /// Applies one changelog record to a lane being restored: a key's
    /// value, or its deletion (`None`). Fails if it does not decode.
    fn restore(
        &self,
        _lane: &mut Self::Lane,
        _key: &[u8],
        _value: Option<&[u8]>,
    ) -> Result<(), String> {
        Err("this stage keeps no changelog".into())
    }
}

/// A keyed stage, whose state is written to a changelog when the job runs
/// on Kafka: what the job and the driver need of it, without its types.
pub(crate) trait Stateful: Send + Sync + 'static {
    /// The stage's name, which names its changelog topic.
    fn name(&self) -> &str;

    /// Its changelog topic, set once, when the job runs on Kafka.
    fn changelog(&self) -> &OnceLock<Arc<str>>;

    /// Whether every record of `partition` given a place so far
    /// (`issued`) has passed the stage: none will touch its lane until the
    /// next is admitted.
    fn drained(&self, partition: i32, issued: u64) -> bool;

    /// Rebuilds `partition`'s lane from the changelog: a fresh lane, every
    /// record applied in order, in place of the old one. Call it only
    /// while the partition is drained here.
    fn restore(&self, partition: i32, reader: &mut dyn ChangelogReader) -> Result<u64, String>;

    /// Drops `partition`'s state, for a partition no longer read here:
    /// its lane keeps only its place in the partition's order. Call it
    /// only while the partition is drained here.
    fn forget(&self, partition: i32);
}

/// A lane being rebuilt from its changelog: the first record that does
/// not decode stops the applying, and is reported once the read ends.
struct Restoring<'s, S: Step<T>, T> {
    step: &'s S,
    lane: S::Lane,
    failed: Option<String>,
}

impl<S: Step<T>, T> Restore for Restoring<'_, S, T> {
    fn expect(&mut self, records: u64) {
        self.step.reserve(&mut self.lane, records);
    }

    fn record(&mut self, key: &[u8], value: Option<&[u8]>) {
        if self.failed.is_none() {
            if let Err(e) = self.step.restore(&mut self.lane, key, value) {
                self.failed = Some(e);
            }
        }
    }
}

/// A record's place at one keyed stage: see the module's doc. Shared by
/// the copies of one record's outlet; the last copy to go passes the
/// record.
pub(crate) struct Ticket {
    gate: Arc<dyn Gate>,
    /// The stage's index in its job ([`InOrder::id`]).
    stage: usize,
    partition: i32,
    seq: u64,
}

impl Ticket {
    pub(crate) fn stage(&self) -> usize {
        self.stage
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.clone().passed(self.partition, self.seq);
    }
}

/// A keyed stage's admission side, without its record type: what the
/// driver and a [`Ticket`] need.
pub(crate) trait Gate: Send + Sync + 'static {
    /// The place at this stage of the record `seq` of `partition`: the
    /// driver numbers each partition's records from 0 as it reads them.
    fn ticket(self: Arc<Self>, partition: i32, seq: u64) -> Ticket;

    /// The record at `seq` of `partition` has passed the stage.
    fn passed(self: Arc<Self>, partition: i32, seq: u64);
}

/// One partition at one keyed stage.
struct Lane<T, L> {
    state: L,
    /// The place of `pending[0]`: every record before it has passed.
    front: u64,
    /// From `front` on, as far as a record has parked or passed: the
    /// records not yet passed, and those passed behind one that has not.
    pending: VecDeque<Place<T>>,
}

impl<T, L> Lane<T, L> {
    /// The place `seq`, at or after `front`.
    fn place(&mut self, seq: u64) -> &mut Place<T> {
        let at = (seq - self.front) as usize;
        if at >= self.pending.len() {
            self.pending.resize_with(at + 1, Place::default);
        }
        &mut self.pending[at]
    }
}

struct Place<T> {
    passed: bool,
    /// Copies of this record that reached the stage before it was first,
    /// in the order they arrived.
    parked: Vec<(T, Outlet)>,
    /// A held follow-on of the record's unit, once a copy parked: one
    /// task carries all of them on, and keeps the unit in flight till then.
    held: Option<Held>,
}

impl<T> Default for Place<T> {
    fn default() -> Self {
        Place {
            passed: false,
            parked: Vec::new(),
            held: None,
        }
    }
}

/// A keyed stage run in input order per partition: the node of the job
/// that wraps a [`Step`].
pub(crate) struct InOrder<T, S: Step<T>> {
    /// This stage's index among its job's keyed stages.
    id: usize,
    step: S,
    lanes: Box<[Stripe<T, S::Lane>]>,
}

/// The lanes of the partitions that share one lock.
type Stripe<T, L> = CachePadded<Mutex<HashMap<i32, Lane<T, L>>>>;

/// What a parked copy's apply gave: its result, or the panic it raised,
/// which a task of the record's unit raises again, so that the unit fails
/// as it would have had the copy applied in its own task.
type Applied<Then> = Result<Then, Box<dyn Any + Send>>;

/// A record's parked copies, applied, and the held task to carry them on.
type Resumed<Then> = (Vec<(Applied<Then>, Outlet)>, Held);

impl<T: Send + 'static, S: Step<T>> InOrder<T, S> {
    /// A keyed stage of the job being built, numbered among its keyed
    /// stages and listed with them, so that the driver gives records
    /// their places at it.
    pub(crate) fn build(parts: &mut Parts, step: S) -> Arc<InOrder<T, S>> {
        let node = Arc::new(InOrder {
            id: parts.gates.len(),
            step,
            lanes: (0..STRIPES).map(|_| CachePadded::default()).collect(),
        });
        parts.gates.push(node.clone());
        node
    }

    fn stripe(&self, partition: i32) -> &Stripe<T, S::Lane> {
        &self.lanes[partition.rem_euclid(STRIPES as i32) as usize]
    }

    fn lane<'m>(
        &self,
        lanes: &'m mut HashMap<i32, Lane<T, S::Lane>>,
        partition: i32,
    ) -> &'m mut Lane<T, S::Lane> {
        lanes.entry(partition).or_insert_with(|| Lane {
            state: self.step.lane(),
            front: 0,
            pending: VecDeque::new(),
        })
    }
}

impl<T: Send + 'static, S: Step<T>> crate::dataflow::Node<T> for InOrder<T, S> {
    fn push(&self, record: T, mut out: Outlet, exec: &mut Exec<'_, '_>) {
        let partition = out.partition();
        // Dropped last, after the lock: passing may take it again.
        let ticket = out.take_ticket(self.id);
        let mut lanes = self.stripe(partition).lock();
        let lane = self.lane(&mut lanes, partition);
        if let Some(ticket) = &ticket {
            if ticket.seq != lane.front {
                // A record read before this one has not passed yet. (Off
                // the runtime nothing can be held; but there records run
                // one at a time, so none is ever behind another.)
                let place = lane.place(ticket.seq);
                if place.held.is_none() {
                    place.held = exec.hold();
                }
                if place.held.is_some() {
                    place.parked.push((record, out));
                    return;
                }
            }
        }
        let then = self.step.apply(&mut lane.state, partition, record, &out);
        drop(lanes);
        drop(ticket);
        self.step.then(then, out, exec);
    }
}

impl<T: Send + 'static, S: Step<T>> Gate for InOrder<T, S> {
    fn ticket(self: Arc<Self>, partition: i32, seq: u64) -> Ticket {
        Ticket {
            stage: self.id,
            gate: self,
            partition,
            seq,
        }
    }

    fn passed(self: Arc<Self>, partition: i32, seq: u64) {
        let mut resumed: Vec<Resumed<S::Then>> = Vec::new();
        {
            let mut lanes = self.stripe(partition).lock();
            let lane = self.lane(&mut lanes, partition);
            lane.place(seq).passed = true;
            // Only the first record's passing lets others on.
            while lane.pending.front().is_some_and(|place| place.passed) {
                lane.pending.pop_front();
                lane.front += 1;
                let Some(first) = lane.pending.front_mut() else {
                    break;
                };
                // The new first record's copies that arrived early apply
                // now, in the order they arrived, before any that come
                // later (those find it first and apply at once).
                let Some(held) = first.held.take() else {
                    continue;
                };
                let applied = std::mem::take(&mut first.parked)
                    .into_iter()
                    .map(|(record, out)| {
                        let applied = catch_unwind(AssertUnwindSafe(|| {
                            self.step.apply(&mut lane.state, partition, record, &out)
                        }));
                        (applied, out)
                    })
                    .collect();
                resumed.push((applied, held));
            }
        }
        for (applied, held) in resumed {
            let stage = self.clone();
            held.start(move |cx| {
                for (applied, out) in applied {
                    match applied {
                        Ok(then) => stage.step.then(then, out, &mut Exec::Task(cx)),
                        // In a task of its own, so that the panic fails the
                        // record's unit without discarding what the other
                        // copies spawned here.
                        Err(panic) => cx.spawn(move |_| std::panic::resume_unwind(panic)),
                    }
                }
            });
        }
    }
}

impl<T: Send + 'static, S: Step<T>> Stateful for InOrder<T, S> {
    fn name(&self) -> &str {
        self.step.changelog().map_or("", |(name, _)| name)
    }

    fn changelog(&self) -> &OnceLock<Arc<str>> {
        self.step
            .changelog()
            .map(|(_, topic)| topic)
            .expect("every keyed stage has a changelog")
    }

    fn drained(&self, partition: i32, issued: u64) -> bool {
        let lanes = self.stripe(partition).lock();
        lanes
            .get(&partition)
            .map_or(true, |lane| lane.front >= issued)
    }

    fn restore(&self, partition: i32, reader: &mut dyn ChangelogReader) -> Result<u64, String> {
        let Some(topic) = Stateful::changelog(self).get().cloned() else {
            return Ok(0);
        };
        // Built outside the lock: no record of the partition is in flight
        // here, and a restore may take a while.
        let mut into = Restoring {
            step: &self.step,
            lane: self.step.lane(),
            failed: None,
        };
        let read = reader
            .read(&topic, partition, &mut into)
            .map_err(|e| error_chain(&e))?;
        let Restoring {
            lane: mut state,
            failed,
            ..
        } = into;
        self.step.restored(&mut state);
        if let Some(e) = failed {
            return Err(format!(
                "a record of changelog {topic} [{partition}] does not decode as stage {}'s \
                 state ({e}): did the job's key or value type change? Deleting the topic \
                 starts its state over",
                Stateful::name(self)
            ));
        }
        let mut lanes = self.stripe(partition).lock();
        self.lane(&mut lanes, partition).state = state;
        Ok(read)
    }

    fn forget(&self, partition: i32) {
        let fresh = self.step.lane();
        let old = self
            .stripe(partition)
            .lock()
            .get_mut(&partition)
            .map(|lane| std::mem::replace(&mut lane.state, fresh));
        // Freed outside the lock: a large state takes a while to drop.
        drop(old);
    }
}

/// An error with its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl<T: Send + 'static, S: Step<T>> Finish for InOrder<T, S> {
    fn finish(&self, out: Outlet, exec: &mut Exec<'_, '_>) {
        let mut closed: Vec<(i32, S::Then)> = Vec::new();
        for stripe in self.lanes.iter() {
            let mut lanes = stripe.lock();
            closed.extend(
                lanes
                    .iter_mut()
                    .filter_map(|(&p, lane)| self.step.close(&mut lane.state).map(|t| (p, t))),
            );
        }
        closed.sort_by_key(|(p, _)| *p);
        for (_, then) in closed {
            self.step.then(then, out.clone(), exec);
        }
    }
}
