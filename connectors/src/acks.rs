//! Which positions are safe to commit.
//!
//! A source `track`s every position it hands out; the driver `ack`s a
//! position once its outputs are acknowledged (or it was dead-lettered).
//! Per partition, the committable offset is the lowest offset still
//! outstanding, or one past the highest tracked when none is: everything
//! below it is done. Records finish out of order, so a finished record above
//! an unfinished one waits.
//!
//! `uncommitted` counts the records read but not yet covered by a
//! successful commit: exactly what a crash would replay. A driver that
//! keeps it below a bound before reading more bounds the duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::Position;

#[derive(Default)]
struct Partition {
    outstanding: BTreeSet<i64>,
    /// One past the highest offset tracked, or where reading started.
    next: i64,
    /// The offset last committed successfully (the next one to read after
    /// a restart), or where reading started.
    committed: i64,
}

impl Partition {
    fn committable(&self) -> i64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

/// Outstanding positions per partition. Shared between the source, the
/// sink side (which acks) and the committer.
#[derive(Default)]
pub struct Acks {
    partitions: Mutex<BTreeMap<i32, Partition>>,
    /// Notified after every successful commit.
    committed: Condvar,
}

impl Acks {
    pub fn new() -> Acks {
        Acks::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<i32, Partition>> {
        // Every operation leaves the maps consistent, so a panic elsewhere
        // while holding the lock does not make them unusable.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a partition at `offset`, where reading resumes.
    pub fn start_partition(&self, partition: i32, offset: i64) {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        p.next = offset;
        p.committed = offset;
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
        self.lock()
            .get_mut(&position.partition)
            .is_some_and(|p| p.outstanding.remove(&position.offset))
    }

    /// Records handed out and not yet acked.
    pub fn outstanding(&self) -> usize {
        self.lock().values().map(|p| p.outstanding.len()).sum()
    }

    /// Records handed out and not yet covered by a successful commit.
    pub fn uncommitted(&self) -> u64 {
        self.lock()
            .values()
            .map(|p| (p.next - p.committed).max(0) as u64)
            .sum()
    }

    /// Per partition, the offset to commit now, where it moved past the
    /// last successful commit.
    pub fn committable(&self) -> Vec<(i32, i64)> {
        self.lock()
            .iter()
            .filter(|(_, p)| p.committable() != p.committed)
            .map(|(&partition, p)| (partition, p.committable()))
            .collect()
    }

    /// Records that `offsets` (from `committable`) were committed.
    pub fn mark_committed(&self, offsets: &[(i32, i64)]) {
        let mut parts = self.lock();
        for &(partition, offset) in offsets {
            if let Some(p) = parts.get_mut(&partition) {
                p.committed = p.committed.max(offset);
            }
        }
        drop(parts);
        self.committed.notify_all();
    }

    /// Waits until fewer than `limit` records are uncommitted, or `timeout`
    /// passes. Returns whether the bound now holds.
    pub fn wait_uncommitted_below(&self, limit: u64, timeout: Duration) -> bool {
        let below = |parts: &mut BTreeMap<i32, Partition>| {
            parts
                .values()
                .map(|p| (p.next - p.committed).max(0) as u64)
                .sum::<u64>()
                < limit
        };
        let guard = self.lock();
        let (mut guard, _) = self
            .committed
            .wait_timeout_while(guard, timeout, |parts| !below(parts))
            .unwrap_or_else(|p| p.into_inner());
        below(&mut guard)
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
        assert_eq!(acks.committable(), vec![]);
        assert_eq!(acks.uncommitted(), 5);
        assert!(acks.ack(pos(0, 12)));
        assert!(acks.ack(pos(0, 13)));
        // 10 and 11 are still running: nothing new to commit.
        assert_eq!(acks.committable(), vec![]);
        assert!(acks.ack(pos(0, 10)));
        assert_eq!(acks.committable(), vec![(0, 11)]);
        acks.mark_committed(&[(0, 11)]);
        assert_eq!(acks.uncommitted(), 4);
        assert!(acks.ack(pos(0, 11)));
        assert_eq!(acks.committable(), vec![(0, 14)]);
        assert!(acks.ack(pos(0, 14)));
        assert_eq!(acks.committable(), vec![(0, 15)]);
        acks.mark_committed(&[(0, 15)]);
        assert_eq!((acks.outstanding(), acks.uncommitted()), (0, 0));
        assert_eq!(acks.committable(), vec![]);
    }

    #[test]
    fn partitions_are_independent_and_double_acks_are_refused() {
        let acks = Acks::new();
        acks.start_partition(0, 5);
        acks.start_partition(1, 0);
        acks.track(pos(1, 0));
        assert!(acks.ack(pos(1, 0)));
        assert!(!acks.ack(pos(1, 0)));
        assert!(!acks.ack(pos(2, 0)));
        // A failed commit is simply not marked: it is offered again.
        assert_eq!(acks.committable(), vec![(1, 1)]);
        assert_eq!(acks.committable(), vec![(1, 1)]);
    }

    #[test]
    fn waiting_for_commits_wakes_when_a_commit_lands() {
        let acks = std::sync::Arc::new(Acks::new());
        acks.start_partition(0, 0);
        acks.track(pos(0, 0));
        acks.track(pos(0, 1));
        assert!(!acks.wait_uncommitted_below(2, Duration::from_millis(10)));
        let committer = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                acks.ack(pos(0, 0));
                acks.mark_committed(&acks.committable());
            })
        };
        assert!(acks.wait_uncommitted_below(2, Duration::from_secs(10)));
        committer.join().unwrap();
    }
}
