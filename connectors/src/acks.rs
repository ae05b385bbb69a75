//! Which positions are safe to commit.
//!
//! A source `track`s every position it hands out; the driver `ack`s a
//! position once its outputs are acknowledged (or it was dead-lettered).
//! Per partition, the committable offset is the lowest offset still
//! outstanding, or one past the highest tracked when none is: everything
//! below it is done. Records finish out of order, so a finished record above
//! an unfinished one waits.
//!
//! [`Acks::uncommitted`] counts the records read and not yet covered by a
//! successful commit, and their bytes: exactly what a crash would replay. A
//! driver that keeps it below a [`ReplayBound`] before reading more bounds
//! the duplicates, and the memory held by records between the source and
//! the commit.
//!
//! Partitions come and go when a consumer group rebalances. A partition
//! is known from `start_partition`, or from the first offset tracked in
//! it (where reading resumed). `release` forgets it. A record of a
//! released partition may still be running; when it finishes, its `ack`
//! answers [`Ack::Released`] and changes nothing, since the partition's
//! new owner decides what is committed now.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Position;

/// Records read and not yet committed, and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uncommitted {
    pub records: u64,
    pub bytes: u64,
}

/// How much may be read and not yet committed: what a crash can replay.
/// Reading waits while either figure is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayBound {
    pub records: u64,
    pub bytes: u64,
}

impl ReplayBound {
    /// Whether `u` leaves room for one more record.
    pub fn admits(&self, u: Uncommitted) -> bool {
        u.records < self.records && u.bytes < self.bytes
    }

    /// The bound scaled by `num / den`, each figure at least 1.
    pub fn scaled(&self, num: u64, den: u64) -> ReplayBound {
        ReplayBound {
            records: (self.records * num / den).max(1),
            bytes: (self.bytes * num / den).max(1),
        }
    }
}

#[derive(Default)]
struct Partition {
    outstanding: BTreeSet<i64>,
    /// One past the highest offset tracked, or where reading started.
    next: i64,
    /// The offset last committed successfully (the next one to read after
    /// a restart), or where reading started.
    committed: i64,
    /// Records tracked at or above `committed`, in offset order, with
    /// their sizes: what a crash would replay.
    replay: VecDeque<(i64, u64)>,
    /// The client went back (see `Acks::track`): the group's offset may be
    /// past what is read, so a commit is owed.
    went_back: bool,
}

impl Partition {
    fn starting_at(offset: i64) -> Partition {
        Partition {
            next: offset,
            committed: offset,
            ..Partition::default()
        }
    }

    fn committable(&self) -> i64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }

    /// What `replay` holds, summed.
    fn uncommitted(&self) -> Uncommitted {
        self.replay
            .iter()
            .fold(Uncommitted::default(), |u, &(_, bytes)| Uncommitted {
                records: u.records + 1,
                bytes: u.bytes + bytes,
            })
    }

    /// Drops from `replay` the records below `offset`, returning what
    /// they were.
    fn forget_below(&mut self, offset: i64) -> Uncommitted {
        let mut gone = Uncommitted::default();
        while let Some(&(o, bytes)) = self.replay.front() {
            if o >= offset {
                break;
            }
            self.replay.pop_front();
            gone.records += 1;
            gone.bytes += bytes;
        }
        gone
    }
}

#[derive(Default)]
struct Partitions {
    live: BTreeMap<i32, Partition>,
    /// Positions that were outstanding when their partition was released.
    released: BTreeSet<Position>,
    /// The sum of every live partition's `replay`.
    uncommitted: Uncommitted,
    /// Records tracked since the tracker was made.
    tracked: u64,
}

impl Partitions {
    fn ack(&mut self, position: Position) -> Ack {
        // A partition released and assigned again can have the same
        // position running twice: once from before the release, once
        // re-read. The first ack counts for the released one, so the
        // offset stays outstanding until both are done; that can delay a
        // commit, never commit early.
        if self.released.remove(&position) {
            Ack::Released
        } else if self
            .live
            .get_mut(&position.partition)
            .is_some_and(|p| p.outstanding.remove(&position.offset))
        {
            Ack::Done
        } else {
            Ack::Unknown
        }
    }

    fn forget(&mut self, gone: Uncommitted) {
        self.uncommitted.records -= gone.records;
        self.uncommitted.bytes -= gone.bytes;
    }
}

/// What an [`Acks::ack`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The position was outstanding and is now done.
    Done,
    /// Its partition was released while the record ran; nothing changes.
    Released,
    /// It was not outstanding: acked twice, or never tracked. A bug.
    Unknown,
}

/// Outstanding positions per partition. Shared between the source, the
/// sink side (which acks) and the committer.
#[derive(Default)]
pub struct Acks {
    partitions: Mutex<Partitions>,
    /// Notified after every successful commit and release.
    committed: Condvar,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks")
            .field("uncommitted", &self.uncommitted())
            .finish_non_exhaustive()
    }
}

impl Acks {
    pub fn new() -> Acks {
        Acks::default()
    }

    fn lock(&self) -> MutexGuard<'_, Partitions> {
        // Every operation leaves the maps consistent, so a panic elsewhere
        // while holding the lock does not make them unusable.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a partition at `offset`, where reading resumes.
    pub fn start_partition(&self, partition: i32, offset: i64) {
        let mut parts = self.lock();
        let p = parts.live.entry(partition).or_default();
        p.next = offset;
        p.committed = offset;
        p.went_back = false;
        let mut gone = p.forget_below(offset);
        // Anything tracked at or above where reading resumes is read again.
        let left = std::mem::take(&mut p.replay);
        gone.records += left.len() as u64;
        gone.bytes += left.iter().map(|&(_, b)| b).sum::<u64>();
        parts.forget(gone);
    }

    /// A record at `position`, of `bytes` bytes, was handed out and is not
    /// done yet. The first position tracked in a partition that was not
    /// started is taken as where reading resumed. Returns whether the
    /// partition started with this record: the first tracked since the
    /// tracker was made, or since the partition was released.
    pub fn track(&self, position: Position, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let mut parts = self.lock();
        let started = !parts.live.contains_key(&position.partition);
        let p = parts
            .live
            .entry(position.partition)
            .or_insert_with(|| Partition::starting_at(position.offset));
        // A source hands out each partition's records in offset order, so
        // a lower offset means its client went back on a partition it
        // kept: the log was cut short under it (a leader elected without
        // the last records, with unclean election on), and the client
        // reads on from the new end. Reading starts over at that offset, and
        // the next commit takes the group's offset back to it: left past
        // it, the records written there next would be skipped after a
        // restart.
        let mut gone = Uncommitted::default();
        if position.offset < p.next {
            tracing::warn!(
                partition = position.partition,
                "the partition went back from offset {} to {}: its log was cut short; \
                 reading starts over there",
                p.next,
                position.offset
            );
            p.next = position.offset;
            p.committed = p.committed.min(position.offset);
            p.went_back = true;
            while let Some(&(o, b)) = p.replay.back() {
                if o < position.offset {
                    break;
                }
                p.replay.pop_back();
                gone.records += 1;
                gone.bytes += b;
            }
        }
        p.outstanding.insert(position.offset);
        p.next = p.next.max(position.offset + 1);
        debug_assert!(p.replay.back().map_or(true, |&(o, _)| o < position.offset));
        p.replay.push_back((position.offset, bytes));
        parts.forget(gone);
        parts.uncommitted.records += 1;
        parts.uncommitted.bytes += bytes;
        parts.tracked += 1;
        started
    }

    /// The record at `position` is done.
    pub fn ack(&self, position: Position) -> Ack {
        self.lock().ack(position)
    }

    /// The records at `positions` are done, taken under one lock: the
    /// sink thread acks a batch at a time, and the admitting thread, which
    /// tracks each record under the same lock, waits for it once a batch
    /// rather than once a record. `each` hears what each ack found; it
    /// runs under the lock, so it must not call back into this tracker.
    pub fn ack_each(
        &self,
        positions: impl IntoIterator<Item = Position>,
        mut each: impl FnMut(Position, Ack),
    ) {
        let mut parts = self.lock();
        for position in positions {
            each(position, parts.ack(position));
        }
    }

    /// Records handed out and not yet acked.
    pub fn outstanding(&self) -> usize {
        self.lock().live.values().map(|p| p.outstanding.len()).sum()
    }

    /// Records of `partitions` handed out and not yet acked.
    pub fn outstanding_in(&self, partitions: &[i32]) -> usize {
        let parts = self.lock();
        partitions
            .iter()
            .filter_map(|p| parts.live.get(p))
            .map(|p| p.outstanding.len())
            .sum()
    }

    /// Waits until no record of `partitions` is outstanding, or until
    /// `timeout` passes. Returns whether they drained. Acks come from the
    /// sink's thread, so the caller must not be the one that acks.
    pub fn wait_drained(&self, partitions: &[i32], timeout: Duration) -> bool {
        // Rebalances are rare, so a short poll keeps `ack` free of wake-ups.
        let deadline = Instant::now() + timeout;
        loop {
            if self.outstanding_in(partitions) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Forgets `partitions`: they are no longer read here. Their records
    /// still running are remembered only so that their acks are known.
    pub fn release(&self, partitions: &[i32]) {
        self.release_with(partitions, true);
    }

    /// Forgets `partitions` and their records still running, for when no
    /// ack of those will ever come: their transaction was aborted, and
    /// the sink drops their results. Remembering them would make the
    /// first ack of a re-read record count for its aborted twin, and
    /// leave the re-read one outstanding for good.
    pub fn release_aborted(&self, partitions: &[i32]) {
        self.release_with(partitions, false);
    }

    fn release_with(&self, partitions: &[i32], running_will_ack: bool) {
        let mut parts = self.lock();
        for partition in partitions {
            if let Some(p) = parts.live.remove(partition) {
                let gone = p.uncommitted();
                parts.forget(gone);
                if running_will_ack {
                    let running = p.outstanding.into_iter().map(|offset| Position {
                        partition: *partition,
                        offset,
                    });
                    parts.released.extend(running);
                }
            }
        }
        drop(parts);
        // The uncommitted count fell: wake a reader waiting on it.
        self.committed.notify_all();
    }

    /// Goes back to the last commit in every live partition: what was
    /// tracked since is forgotten (its records will be read again), and
    /// acks of it are no longer expected. Returns each partition's last
    /// committed offset, where reading resumes.
    pub fn rewind(&self) -> Vec<(i32, i64)> {
        let mut parts = self.lock();
        let mut gone = Uncommitted::default();
        let mut at = Vec::new();
        for (&partition, p) in parts.live.iter_mut() {
            let g = p.uncommitted();
            gone.records += g.records;
            gone.bytes += g.bytes;
            p.replay.clear();
            p.outstanding.clear();
            p.next = p.committed;
            at.push((partition, p.committed));
        }
        parts.forget(gone);
        drop(parts);
        self.committed.notify_all();
        at
    }

    /// Per live partition, the offset last committed (or where reading
    /// started).
    pub fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        self.lock()
            .live
            .iter()
            .map(|(&partition, p)| (partition, p.committed))
            .collect()
    }

    /// Per live partition, one past the highest offset handed out (or
    /// where reading started): where the records not yet handed out begin.
    pub fn read_up_to(&self) -> BTreeMap<i32, i64> {
        self.lock()
            .live
            .iter()
            .map(|(&partition, p)| (partition, p.next))
            .collect()
    }

    /// Records handed out since the tracker was made.
    pub fn tracked(&self) -> u64 {
        self.lock().tracked
    }

    /// Records handed out and not yet covered by a successful commit, and
    /// their bytes.
    pub fn uncommitted(&self) -> Uncommitted {
        self.lock().uncommitted
    }

    /// Per partition, the offset to commit now, where it moved past the
    /// last successful commit.
    pub fn committable(&self) -> Vec<(i32, i64)> {
        self.lock()
            .live
            .iter()
            .filter(|(_, p)| p.went_back || p.committable() != p.committed)
            .map(|(&partition, p)| (partition, p.committable()))
            .collect()
    }

    /// Records that `offsets` (from `committable`) were committed.
    /// Offsets of partitions released meanwhile are ignored.
    pub fn mark_committed(&self, offsets: &[(i32, i64)]) {
        let mut parts = self.lock();
        let mut gone = Uncommitted::default();
        for &(partition, offset) in offsets {
            if let Some(p) = parts.live.get_mut(&partition) {
                // A commit taken before the partition went back covers
                // records that are read again: it changes nothing here.
                // (Past what is read is otherwise fine: a rewind learns the
                // group's offset so.)
                if p.went_back && offset > p.committable() {
                    continue;
                }
                p.went_back = false;
                p.committed = p.committed.max(offset);
                let g = p.forget_below(p.committed);
                gone.records += g.records;
                gone.bytes += g.bytes;
            }
        }
        parts.forget(gone);
        drop(parts);
        self.committed.notify_all();
    }

    /// Waits until `bound` admits another record, or `timeout` passes.
    /// Returns whether it now does.
    pub fn wait_uncommitted_below(&self, bound: ReplayBound, timeout: Duration) -> bool {
        let guard = self.lock();
        if bound.admits(guard.uncommitted) {
            return true;
        }
        let (guard, _) = self
            .committed
            .wait_timeout_while(guard, timeout, |parts| !bound.admits(parts.uncommitted))
            .unwrap_or_else(|p| p.into_inner());
        bound.admits(guard.uncommitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    fn replay(records: u64, bytes: u64) -> Uncommitted {
        Uncommitted { records, bytes }
    }

    #[test]
    fn read_up_to_is_past_the_last_record_handed_out_in_each_partition() {
        let acks = Acks::new();
        assert!(acks.read_up_to().is_empty());
        assert_eq!(acks.tracked(), 0);
        acks.start_partition(1, 40);
        for (partition, offset) in [(0, 7), (0, 8), (0, 10)] {
            acks.track(Position { partition, offset }, 1);
        }
        assert_eq!(acks.read_up_to(), [(0, 11), (1, 40)].into());
        assert_eq!(acks.tracked(), 3);
        // Done or not, a record handed out stays handed out.
        acks.ack(Position {
            partition: 0,
            offset: 7,
        });
        assert_eq!(acks.read_up_to()[&0], 11);
        // Read again from an earlier offset (a rewind).
        acks.start_partition(0, 8);
        assert_eq!(acks.read_up_to()[&0], 8);
        assert_eq!(acks.tracked(), 3, "a count of what was handed out");
        // A partition given away is no longer read here.
        acks.release(&[1]);
        assert_eq!(acks.read_up_to(), [(0, 8)].into());
    }

    #[test]
    fn ack_each_finds_what_ack_finds_for_each_position() {
        let acks = Acks::new();
        acks.start_partition(0, 0);
        acks.start_partition(1, 0);
        for o in 0..3 {
            acks.track(pos(0, o), 10);
        }
        acks.track(pos(1, 0), 10);
        acks.release(&[1]);
        let mut found = Vec::new();
        acks.ack_each([pos(0, 1), pos(1, 0), pos(0, 1), pos(0, 0)], |p, a| {
            found.push((p.partition, p.offset, a))
        });
        assert_eq!(
            found,
            [
                (0, 1, Ack::Done),
                (1, 0, Ack::Released),
                (0, 1, Ack::Unknown),
                (0, 0, Ack::Done),
            ]
        );
        assert_eq!(acks.committable(), vec![(0, 2)]);
    }

    #[test]
    fn commit_stops_below_the_lowest_unacked_offset() {
        let acks = Acks::new();
        acks.start_partition(0, 10);
        for o in 10..15 {
            acks.track(pos(0, o), 10);
        }
        assert_eq!(acks.committable(), vec![]);
        assert_eq!(acks.uncommitted(), replay(5, 50));
        assert_eq!(acks.ack(pos(0, 12)), Ack::Done);
        assert_eq!(acks.ack(pos(0, 13)), Ack::Done);
        // 10 and 11 are still running: nothing new to commit.
        assert_eq!(acks.committable(), vec![]);
        assert_eq!(acks.ack(pos(0, 10)), Ack::Done);
        assert_eq!(acks.committable(), vec![(0, 11)]);
        acks.mark_committed(&[(0, 11)]);
        assert_eq!(acks.uncommitted(), replay(4, 40));
        assert_eq!(acks.ack(pos(0, 11)), Ack::Done);
        assert_eq!(acks.committable(), vec![(0, 14)]);
        assert_eq!(acks.ack(pos(0, 14)), Ack::Done);
        assert_eq!(acks.committable(), vec![(0, 15)]);
        acks.mark_committed(&[(0, 15)]);
        assert_eq!((acks.outstanding(), acks.uncommitted()), (0, replay(0, 0)));
        assert_eq!(acks.committable(), vec![]);
    }

    #[test]
    fn partitions_are_independent_and_double_acks_are_refused() {
        let acks = Acks::new();
        acks.start_partition(0, 5);
        acks.start_partition(1, 0);
        acks.track(pos(1, 0), 1);
        assert_eq!(acks.ack(pos(1, 0)), Ack::Done);
        assert_eq!(acks.ack(pos(1, 0)), Ack::Unknown);
        assert_eq!(acks.ack(pos(2, 0)), Ack::Unknown);
        // A failed commit is simply not marked: it is offered again.
        assert_eq!(acks.committable(), vec![(1, 1)]);
        assert_eq!(acks.committable(), vec![(1, 1)]);
    }

    #[test]
    fn a_partition_first_seen_in_track_resumes_at_that_offset() {
        let acks = Acks::new();
        acks.track(pos(3, 40), 7);
        acks.track(pos(3, 41), 8);
        assert_eq!(acks.uncommitted(), replay(2, 15));
        assert_eq!(acks.ack(pos(3, 40)), Ack::Done);
        assert_eq!(acks.committable(), vec![(3, 41)]);
    }

    #[test]
    fn released_partitions_stop_counting_and_their_late_acks_change_nothing() {
        let acks = Acks::new();
        for o in 0..4 {
            acks.track(pos(0, o), 1);
            acks.track(pos(1, o), 2);
        }
        assert_eq!(acks.ack(pos(1, 0)), Ack::Done);
        assert_eq!(acks.outstanding_in(&[1]), 3);
        assert!(!acks.wait_drained(&[1], Duration::from_millis(5)));
        acks.release(&[1]);
        assert_eq!((acks.outstanding(), acks.uncommitted()), (4, replay(4, 4)));
        assert_eq!(acks.outstanding_in(&[1]), 0);
        assert!(acks.wait_drained(&[1], Duration::ZERO));
        // The records that were running finish after the release.
        assert_eq!(acks.ack(pos(1, 2)), Ack::Released);
        assert_eq!(acks.ack(pos(1, 2)), Ack::Unknown);
        assert_eq!(acks.committable(), vec![]);
        acks.mark_committed(&[(1, 4)]);
        assert_eq!(acks.committable(), vec![]);
        // Assigned again later: it resumes at the first record re-read.
        // Offset 1 is re-read while its first run is still going: it is
        // done only after both acks.
        acks.track(pos(1, 1), 2);
        assert_eq!(acks.ack(pos(1, 1)), Ack::Released);
        assert_eq!(acks.committable(), vec![]);
        assert_eq!(acks.ack(pos(1, 1)), Ack::Done);
        assert_eq!(acks.committable(), vec![(1, 2)]);
    }

    #[test]
    fn a_partition_released_after_an_abort_is_read_again_without_waiting_for_its_twins() {
        let acks = Acks::new();
        acks.start_partition(1, 0);
        acks.track(pos(1, 0), 2);
        acks.track(pos(1, 1), 2);
        // The transaction holding both was aborted: their results are
        // dropped, and no ack of them ever comes.
        acks.release_aborted(&[1]);
        assert_eq!((acks.outstanding(), acks.uncommitted()), (0, replay(0, 0)));
        // Assigned again and read again from the last commit.
        acks.start_partition(1, 0);
        acks.track(pos(1, 0), 2);
        acks.track(pos(1, 1), 2);
        assert_eq!(acks.ack(pos(1, 0)), Ack::Done);
        assert_eq!(acks.ack(pos(1, 1)), Ack::Done);
        assert_eq!(acks.committable(), vec![(1, 2)]);
    }

    #[test]
    fn waiting_for_commits_wakes_when_a_commit_lands() {
        let acks = std::sync::Arc::new(Acks::new());
        acks.start_partition(0, 0);
        acks.track(pos(0, 0), 1);
        acks.track(pos(0, 1), 1);
        let bound = ReplayBound {
            records: 2,
            bytes: u64::MAX,
        };
        assert!(!acks.wait_uncommitted_below(bound, Duration::from_millis(10)));
        let committer = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                acks.ack(pos(0, 0));
                acks.mark_committed(&acks.committable());
            })
        };
        assert!(acks.wait_uncommitted_below(bound, Duration::from_secs(10)));
        committer.join().unwrap();
    }

    #[test]
    fn a_rewind_goes_back_to_the_last_commit_everywhere() {
        let acks = Acks::new();
        acks.start_partition(0, 10);
        acks.start_partition(1, 0);
        for o in 10..14 {
            acks.track(pos(0, o), 1);
        }
        acks.track(pos(1, 0), 1);
        acks.ack(pos(0, 10));
        acks.mark_committed(&acks.committable());
        assert_eq!(acks.rewind(), vec![(0, 11), (1, 0)]);
        assert_eq!((acks.outstanding(), acks.uncommitted()), (0, replay(0, 0)));
        assert_eq!(acks.committable(), vec![]);
        // Read again from there.
        acks.track(pos(0, 11), 1);
        assert_eq!(acks.ack(pos(0, 11)), Ack::Done);
        assert_eq!(acks.committable(), vec![(0, 12)]);
    }

    #[test]
    fn the_bytes_bound_holds_reading_back_as_the_records_bound_does() {
        let acks = Acks::new();
        let bound = ReplayBound {
            records: 100,
            bytes: 1000,
        };
        acks.track(pos(0, 0), 600);
        assert!(bound.admits(acks.uncommitted()));
        acks.track(pos(0, 1), 400);
        assert!(!acks.wait_uncommitted_below(bound, Duration::ZERO));
        acks.ack(pos(0, 0));
        acks.mark_committed(&acks.committable());
        assert_eq!(acks.uncommitted(), replay(1, 400));
        assert!(acks.wait_uncommitted_below(bound, Duration::ZERO));
    }

    #[test]
    fn a_partition_started_again_replays_nothing_of_before() {
        let acks = Acks::new();
        acks.start_partition(0, 0);
        for o in 0..5 {
            acks.track(pos(0, o), 3);
        }
        acks.start_partition(0, 2);
        assert_eq!(acks.uncommitted(), replay(0, 0));
        acks.track(pos(0, 2), 3);
        assert_eq!(acks.uncommitted(), replay(1, 3));
    }

    /// A partition whose client goes back (its log cut short) starts over
    /// where it went back to: the commit follows the records read there,
    /// not the offset reached before.
    #[test]
    fn a_partition_that_goes_back_is_committed_from_where_it_went_back() {
        let acks = Acks::new();
        acks.start_partition(0, 0);
        for o in 0..10 {
            acks.track(pos(0, o), 10);
            acks.ack(pos(0, o));
        }
        assert_eq!(acks.committable(), [(0, 10)]);
        acks.mark_committed(&[(0, 10)]);
        assert_eq!(acks.uncommitted(), replay(0, 0));

        for o in [4, 5] {
            acks.track(pos(0, o), 10);
        }
        assert_eq!(acks.uncommitted(), replay(2, 20));
        assert_eq!(acks.committable(), [(0, 4)], "the first record read again");
        acks.ack(pos(0, 4));
        acks.ack(pos(0, 5));
        assert_eq!(
            acks.committable(),
            [(0, 6)],
            "not 10: offsets 6 to 9 are new"
        );
        acks.mark_committed(&[(0, 6)]);
        assert_eq!(acks.uncommitted(), replay(0, 0));
        assert_eq!(acks.committed_offsets()[&0], 6);

        // A commit taken before it went back, answered after, changes
        // nothing: the next commit takes the group's offset back.
        acks.track(pos(0, 6), 10);
        acks.ack(pos(0, 6));
        let before = acks.committable();
        acks.track(pos(0, 2), 10);
        acks.mark_committed(&before);
        assert_eq!(acks.committed_offsets()[&0], 2);
        assert_eq!(acks.committable(), [(0, 2)], "the group's offset goes back");
        acks.ack(pos(0, 2));
        assert_eq!(acks.committable(), [(0, 3)]);
    }
}
