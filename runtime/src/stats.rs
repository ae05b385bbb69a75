//! Scheduler statistics.
//!
//! Counters are plain `std` atomics even under loom: they take part in no
//! protocol, and keeping them out of the model keeps its state space small.
//! Per-worker counters have a single writer (their worker), which bumps them
//! with a relaxed load and store; that compiles to an ordinary add, not a
//! locked instruction, so leaving them on costs next to nothing.
//!
//! Busy time is kept the same way, and written only when a worker starts,
//! parks, wakes or exits: the loop that runs tasks never reads the clock.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The CPU this worker is pinned to, if pinning is on and succeeded.
    pub cpu: Option<usize>,
    /// Tasks this worker ran, wherever it found them.
    pub tasks_run: u64,
    /// Tasks this worker took from another worker's deque.
    pub tasks_stolen: u64,
    /// Times this worker parked because it found no work.
    pub parks: u64,
    /// Time this worker spent awake, running tasks or looking for them,
    /// since it started: its lifetime less the time it was parked. Never
    /// less than in an earlier snapshot of the same runtime.
    pub busy: Duration,
}

/// A snapshot of the whole runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub workers: Vec<WorkerStats>,
    /// The admission window W when the snapshot was taken.
    pub window: usize,
    /// Units admitted and not yet finished.
    pub in_flight: usize,
    /// The most units ever in flight at once. Never exceeds the largest
    /// window the runtime had.
    pub max_in_flight: usize,
    /// Units admitted: completed + failed + in flight (a slot reserved and
    /// not yet submitted counts as admitted). Exact once the runtime is
    /// drained; while it runs, the three are read one after another and may
    /// be a unit apart.
    pub admitted: u64,
    /// Units whose every task ran without panicking.
    pub completed: u64,
    /// Units in which some task panicked.
    pub failed: u64,
}

impl Stats {
    pub fn tasks_run(&self) -> u64 {
        self.workers.iter().map(|w| w.tasks_run).sum()
    }

    pub fn tasks_stolen(&self) -> u64 {
        self.workers.iter().map(|w| w.tasks_stolen).sum()
    }

    pub fn parks(&self) -> u64 {
        self.workers.iter().map(|w| w.parks).sum()
    }

    pub fn busy(&self) -> Duration {
        self.workers.iter().map(|w| w.busy).sum()
    }
}

/// The runtime's clock: nanoseconds since it was built.
pub(crate) struct Clock(Instant);

impl Default for Clock {
    fn default() -> Clock {
        Clock(Instant::now())
    }
}

impl Clock {
    pub(crate) fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
pub(crate) struct WorkerCounters {
    tasks_run: AtomicU64,
    tasks_stolen: AtomicU64,
    parks: AtomicU64,
    /// Units this worker completed without a failure. Summed over the
    /// workers, it is the runtime's `completed`; counting here, where each
    /// counter has one writer, keeps admission free of a shared RMW.
    units_completed: AtomicU64,
    /// Busy time in one word, so that a reader never sees half a
    /// transition. Awake: `t << 1 | 1`, and the worker has been busy for
    /// `now - t` ns (`t` is when it started plus the time it was parked).
    /// Parked, exited or not yet started: `b << 1`, busy for `b` ns.
    busy: AtomicU64,
    /// The most busy time a snapshot reported. A snapshot that reads the
    /// clock just before a park and the word just after it could come out a
    /// little lower than the one before; reporting the maximum keeps busy
    /// time a counter that never goes back.
    busy_reported: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // Single writer: load + store cannot lose an increment.
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

impl WorkerCounters {
    pub(crate) fn ran_task(&self) {
        bump(&self.tasks_run);
    }

    pub(crate) fn stole_task(&self) {
        bump(&self.tasks_stolen);
    }

    /// The worker starts running or wakes from a park, at `now`.
    pub(crate) fn woke(&self, now: u64) {
        let busy = self.busy.load(Relaxed) >> 1;
        self.busy
            .store((now.saturating_sub(busy) << 1) | 1, Relaxed);
    }

    /// The worker parks for lack of work, at `now`.
    pub(crate) fn parked(&self, now: u64) {
        bump(&self.parks);
        self.stopped(now);
    }

    /// The worker stops being busy at `now`: it parks or exits.
    pub(crate) fn stopped(&self, now: u64) {
        let since = self.busy.load(Relaxed) >> 1;
        self.busy.store(now.saturating_sub(since) << 1, Relaxed);
    }

    pub(crate) fn busy_ns(&self, now: u64) -> u64 {
        let word = self.busy.load(Relaxed);
        let busy = if word & 1 == 1 {
            now.saturating_sub(word >> 1)
        } else {
            word >> 1
        };
        self.busy_reported.fetch_max(busy, Relaxed).max(busy)
    }

    pub(crate) fn completed_unit(&self) {
        bump(&self.units_completed);
    }

    pub(crate) fn units_completed(&self) -> u64 {
        self.units_completed.load(Relaxed)
    }

    /// What the worker did, as of `now` on the runtime's clock.
    pub(crate) fn snapshot(&self, cpu: Option<usize>, now: u64) -> WorkerStats {
        WorkerStats {
            cpu,
            tasks_run: self.tasks_run.load(Relaxed),
            tasks_stolen: self.tasks_stolen.load(Relaxed),
            parks: self.parks.load(Relaxed),
            busy: Duration::from_nanos(self.busy_ns(now)),
        }
    }
}

/// Totals shared by every thread. `failed` is bumped by workers, only on the
/// failure path. Admissions are not counted at all: they are derived as
/// completed + failed + in flight.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) failed: CachePadded<AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_awake_time_only() {
        let c = WorkerCounters::default();
        assert_eq!(c.busy_ns(500), 0, "not started: not busy");
        c.woke(100);
        assert_eq!(c.busy_ns(150), 50);
        c.parked(150);
        assert_eq!(c.busy_ns(1_000), 50, "parked time is not busy");
        c.woke(1_000);
        assert_eq!(c.busy_ns(1_010), 60);
        c.stopped(1_020);
        assert_eq!(c.busy_ns(9_999), 70, "an exited worker is not busy");
        assert_eq!(c.snapshot(None, 9_999).busy, Duration::from_nanos(70));
        assert_eq!(c.snapshot(None, 9_999).parks, 1);
    }

    #[test]
    fn busy_time_never_goes_back() {
        let c = WorkerCounters::default();
        c.woke(100);
        assert_eq!(c.busy_ns(200), 100);
        // A reader whose clock read came before the worker's park.
        c.parked(190);
        assert_eq!(c.busy_ns(300), 100);
    }
}
