//! Which positions are safe to commit.
//!
//! A source `track`s every position it hands out; the driver `ack`s a
//! position once its outputs are acknowledged (or it was dead-lettered).
//! Per partition, the committable offset is the lowest offset still
//! outstanding, or one past the highest tracked when none is: everything
//! below it is done. Records finish out of order, so a finished record above
//! an unfinished one waits; that bounds replays after a crash to what was
//! in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::Position;

#[derive(Default)]
struct Partition {
    outstanding: BTreeSet<i64>,
    /// One past the highest offset tracked so far.
    next: i64,
    /// The last offset reported by `committable`, to skip no-op commits.
    committed: Option<i64>,
}

/// Outstanding positions per partition. Shared between the source (which
/// tracks and commits) and the driver's sink side (which acks).
#[derive(Default)]
pub struct Acks {
    partitions: Mutex<BTreeMap<i32, Partition>>,
}

impl Acks {
    pub fn new() -> Acks {
        Acks::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Partition>> {
        // A panic while holding this lock leaves the maps consistent (every
        // operation is a single insert or remove), so poisoning is ignored.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a partition at `offset` (where reading resumes), so
    /// that a partition with nothing read yet is not committed past it.
    pub fn start_partition(&self, partition: i32, offset: i64) {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        p.next = p.next.max(offset);
    }

    /// A record at `position` was handed out and is not done yet.
    pub fn track(&self, position: Position) {
        let mut parts = self.lock();
        let p = parts.entry(position.partition).or_default();
        p.outstanding.insert(position.offset);
        p.next = p.next.max(position.offset + 1);
    }

    /// The record at `position` is done. Returns false if it was not
    /// outstanding (acked twice, or never tracked).
    pub fn ack(&self, position: Position) -> bool {
        let mut parts = self.lock();
        parts
            .get_mut(&position.partition)
            .is_some_and(|p| p.outstanding.remove(&position.offset))
    }

    /// Records handed out and not yet acked, over all partitions.
    pub fn outstanding(&self) -> usize {
        self.lock().values().map(|p| p.outstanding.len()).sum()
    }

    /// Per partition, the offset to commit (the next one to read), for the
    /// partitions whose committable offset moved since the last call.
    pub fn take_committable(&self) -> Vec<(i32, i64)> {
        let mut parts = self.lock();
        let mut out = Vec::new();
        for (&partition, p) in parts.iter_mut() {
            let offset = p.outstanding.first().copied().unwrap_or(p.next);
            if p.committed != Some(offset) {
                p.committed = Some(offset);
                out.push((partition, offset));
            }
        }
        out
    }

    /// Forgets that offsets were committed, so the next `take_committable`
    /// reports every partition again (after a failed commit).
    pub fn retry_commit(&self) {
        for p in self.lock().values_mut() {
            p.committed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn commit_stops_below_the_lowest_unacked_offset() {
        let acks = Acks::new();
        acks.start_partition(0, 10);
        for o in 10..15 {
            acks.track(pos(0, o));
        }
        assert_eq!(acks.take_committable(), vec![(0, 10)]);
        assert!(acks.ack(pos(0, 12)));
        assert!(acks.ack(pos(0, 13)));
        // 10 and 11 are still running: nothing new to commit.
        assert_eq!(acks.take_committable(), vec![]);
        assert!(acks.ack(pos(0, 10)));
        assert_eq!(acks.take_committable(), vec![(0, 11)]);
        assert!(acks.ack(pos(0, 11)));
        assert_eq!(acks.take_committable(), vec![(0, 14)]);
        assert!(acks.ack(pos(0, 14)));
        assert_eq!(acks.take_committable(), vec![(0, 15)]);
        assert_eq!(acks.outstanding(), 0);
    }

    #[test]
    fn partitions_are_independent_and_double_acks_are_refused() {
        let acks = Acks::new();
        acks.start_partition(1, 0);
        acks.track(pos(0, 5));
        acks.track(pos(1, 0));
        assert!(acks.ack(pos(1, 0)));
        assert!(!acks.ack(pos(1, 0)));
        assert!(!acks.ack(pos(2, 0)));
        assert_eq!(acks.take_committable(), vec![(0, 5), (1, 1)]);
        acks.retry_commit();
        assert_eq!(acks.take_committable(), vec![(0, 5), (1, 1)]);
    }
}
