//! Sizes a window the caller left to the runtime by the work it holds
//! (`window.md`, "Resizing").
//!
//! Not part of any protocol: it only picks a new W, which the window takes
//! as `set_cap` says. Its lock and flag are `std` even under loom, like the
//! statistics it reads; loom models give the window a size of their own.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A window the runtime sizes holds at least this much work per worker: a
/// full window's admitter is woken once half of it is free (`window.md`,
/// "Waking in batches"), and half a millisecond of work is many times what
/// that wake-up takes, so the workers do not run dry waiting for it.
pub const WINDOW_WORK_PER_WORKER: Duration = Duration::from_millis(1);

/// And at most this many units per worker: what a drain (a SIGTERM, a
/// partition moving away) waits for stays small however light the units.
pub const MAX_WINDOW_PER_WORKER: usize = 1024;

/// Work per unit is measured over at least this long between resizes.
const SAMPLE_NS: u64 = 10_000_000;

pub(crate) struct Sizer {
    floor: usize,
    ceiling: usize,
    workers: usize,
    /// The last measurement; taken with `try_lock`, so that two admitters
    /// never wait for each other here.
    last: Mutex<Sample>,
    /// Cleared for good once the window is set by hand.
    on: AtomicBool,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    at_ns: u64,
    busy_ns: u64,
    units: u64,
}

impl Sizer {
    /// Sizes between `floor` (the window the runtime starts with) and
    /// [`MAX_WINDOW_PER_WORKER`] per worker, within `max`.
    pub(crate) fn new(workers: usize, floor: usize, max: usize) -> Sizer {
        let ceiling = (MAX_WINDOW_PER_WORKER * workers).clamp(floor, max.max(floor));
        Sizer {
            floor,
            ceiling,
            workers,
            last: Mutex::new(Sample::default()),
            on: AtomicBool::new(true),
        }
    }

    /// The window that holds [`WINDOW_WORK_PER_WORKER`] per worker of
    /// units that each keep a worker busy for `cost_ns`.
    pub(crate) fn window_for(&self, cost_ns: u64) -> usize {
        let work = WINDOW_WORK_PER_WORKER.as_nanos() as u64;
        let per_worker = usize::try_from(work.div_ceil(cost_ns.max(1))).unwrap_or(usize::MAX);
        per_worker
            .saturating_mul(self.workers)
            .clamp(self.floor, self.ceiling)
    }

    /// Called by an admitter that found the window full, at `now_ns`.
    /// `measure` gives the workers' busy time and the units they finished,
    /// both since the runtime started. Returns the window to set, if a
    /// sample has passed since the last one and says so; `set` sets it
    /// while no other resize or a hand-set window can run.
    pub(crate) fn resize(
        &self,
        now_ns: u64,
        measure: impl FnOnce() -> (u64, u64),
        set: impl FnOnce(usize),
    ) {
        if !self.on.load(Relaxed) {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if now_ns.saturating_sub(last.at_ns) < SAMPLE_NS || !self.on.load(Relaxed) {
            return;
        }
        let (busy_ns, units) = measure();
        let (busy, done) = (
            busy_ns.saturating_sub(last.busy_ns),
            units.saturating_sub(last.units),
        );
        *last = Sample {
            at_ns: now_ns,
            busy_ns,
            units,
        };
        if let Some(cost_ns) = busy.checked_div(done) {
            set(self.window_for(cost_ns));
        }
    }

    /// Stops sizing for good; `set` sets the window by hand, while no
    /// resize can run.
    pub(crate) fn stop(&self, set: impl FnOnce()) {
        let _last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.on.store(false, Relaxed);
        set();
    }
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;

    #[test]
    fn heavy_units_keep_the_floor_and_light_ones_grow_it_up_to_the_ceiling() {
        let s = Sizer::new(2, 32, 1 << 20);
        assert_eq!(s.window_for(2_000_000), 32, "2 ms units: the floor");
        assert_eq!(s.window_for(100_000), 32, "10 units hold 1 ms: the floor");
        assert_eq!(s.window_for(20_000), 100, "50 per worker hold 1 ms");
        assert_eq!(s.window_for(1_500), 2 * 667);
        assert_eq!(s.window_for(0), 2048, "the ceiling, 1024 per worker");
        assert_eq!(Sizer::new(2, 32, 100).window_for(0), 100, "within max");
        assert_eq!(Sizer::new(1, 64, 1 << 20).window_for(0), 1024);
    }

    #[test]
    fn it_resizes_once_per_sample_and_never_after_a_stop() {
        let s = Sizer::new(2, 32, 1 << 20);
        let mut set = Vec::new();
        // 10 ms of two workers' time over 10,000 units: 2 us each.
        s.resize(SAMPLE_NS, || (20_000_000, 10_000), |w| set.push(w));
        s.resize(SAMPLE_NS + 1, || (30_000_000, 10_001), |w| set.push(w));
        assert_eq!(set, vec![1000], "the second call is within the sample");
        // Nothing finished over a sample: nothing to go by.
        s.resize(3 * SAMPLE_NS, || (40_000_000, 10_000), |w| set.push(w));
        assert_eq!(set, vec![1000]);
        let mut fixed = false;
        s.stop(|| fixed = true);
        assert!(fixed);
        s.resize(10 * SAMPLE_NS, || (50_000_000, 20_000), |w| set.push(w));
        assert_eq!(set, vec![1000], "a stopped sizer sets nothing");
    }
}
