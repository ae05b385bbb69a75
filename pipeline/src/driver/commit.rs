//! The commit thread: commits what the acknowledgements allow, by time.

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use fila_connectors::{Acks, Committer, ReplayBound};

use super::DriverError;
use crate::counters::Counters;

/// When the commit thread commits.
pub(super) struct CommitClock<'a> {
    committer: Box<dyn Committer>,
    counters: &'a Counters,
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

impl<'a> CommitClock<'a> {
    pub(super) fn new(
        committer: Box<dyn Committer>,
        interval: Duration,
        bound: ReplayBound,
        counters: &'a Counters,
    ) -> CommitClock<'a> {
        CommitClock {
            committer,
            counters,
            interval,
            urgent: bound.scaled(1, 2),
            pending: false,
            last: Instant::now(),
        }
    }

    fn due(&self, acks: &Acks) -> bool {
        self.pending
            && (self.last.elapsed() >= self.interval || !self.urgent.admits(acks.uncommitted()))
    }

    fn commit(&mut self, acks: &Acks) -> Result<(), DriverError> {
        let started = Instant::now();
        if self.committer.commit().map_err(DriverError::Commit)? {
            self.counters.committed(started.elapsed());
        }
        // A commit the broker refused for now (a group rebalancing) leaves
        // its offsets committable: keep them pending, so they are offered
        // again after `interval` even if no record is acknowledged
        // meanwhile. With the replay bound full, none would be.
        self.pending = !acks.committable().is_empty();
        self.last = Instant::now();
        Ok(())
    }

    /// The commit thread: `acked` brings how many records the sink thread
    /// acknowledged in each batch. It ends when the sink thread does,
    /// after committing everything acknowledged.
    pub(super) fn run(mut self, acked: Receiver<u64>, acks: &Acks) -> Result<(), DriverError> {
        loop {
            // With acknowledgements waiting, wake in time to commit them
            // even if no more come.
            let received = if self.pending {
                let left = self.interval.saturating_sub(self.last.elapsed());
                acked.recv_timeout(left)
            } else {
                acked
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            match received {
                Ok(n) => self.pending |= n > 0,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.pending |= acked.try_iter().any(|n| n > 0);
            if self.due(acks) {
                self.commit(acks)?;
            }
        }
        if self.pending {
            self.commit(acks)?;
        }
        Ok(())
    }
}
