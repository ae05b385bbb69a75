//! Scheduler statistics.
//!
//! Counters are plain `std` atomics even under loom: they take part in no
//! protocol, and keeping them out of the model keeps its state space small.
//! Per-worker counters have a single writer (their worker), which bumps them
//! with a relaxed load and store; that compiles to an ordinary add, not a
//! locked instruction, so leaving them on costs next to nothing.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

/// A snapshot of the whole runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub workers: Vec<WorkerStats>,
    /// The admission window W.
    pub window: usize,
    /// Units admitted and not yet finished.
    pub in_flight: usize,
    /// The most units ever in flight at once. Never exceeds `window`.
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

    pub(crate) fn parked(&self) {
        bump(&self.parks);
    }

    pub(crate) fn completed_unit(&self) {
        bump(&self.units_completed);
    }

    pub(crate) fn units_completed(&self) -> u64 {
        self.units_completed.load(Relaxed)
    }

    pub(crate) fn snapshot(&self, cpu: Option<usize>) -> WorkerStats {
        WorkerStats {
            cpu,
            tasks_run: self.tasks_run.load(Relaxed),
            tasks_stolen: self.tasks_stolen.load(Relaxed),
            parks: self.parks.load(Relaxed),
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
