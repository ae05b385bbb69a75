//! The worker loop: find a task, run it, push its follow-ons, and park when
//! there is nothing to do.

use crate::queue::{Steal, Worker};
use crate::sync::{Arc, Ordering};
use crate::task::{panic_message, Task};
use crate::Shared;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(crate) struct WorkerThread {
    shared: Arc<Shared>,
    index: usize,
    local: Worker<Task>,
    /// Follow-ons of the running task, pushed only once it returns.
    spawned: Vec<Task>,
    /// Picks the first victim of each steal round.
    rng: FastRand,
    /// Units this worker completed whose slots it has not yet released.
    owed: u64,
    /// Release once this many are owed (`Window::release_batch`).
    release_batch: u64,
}

/// A per-worker xorshift generator: no shared state, a few instructions a
/// draw. Good enough to spread thieves over victims; nothing else.
struct FastRand(u32);

impl FastRand {
    fn new(seed: usize) -> FastRand {
        // Any odd-ish nonzero seed works; xorshift must never hold 0.
        FastRand((seed as u32).wrapping_mul(0x9e37_79b9) | 1)
    }

    /// A value in `0..n`, for `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        // Multiply-shift instead of `%`: no division, and no bias worth
        // naming for the handful of workers we index.
        ((u64::from(x) * n as u64) >> 32) as usize
    }
}

impl WorkerThread {
    pub(crate) fn new(shared: Arc<Shared>, index: usize, local: Worker<Task>) -> WorkerThread {
        let release_batch = shared.window.release_batch(shared.parkers.len());
        WorkerThread {
            shared,
            index,
            local,
            spawned: Vec::new(),
            rng: FastRand::new(index + 1),
            owed: 0,
            release_batch,
        }
    }

    pub(crate) fn run(mut self) {
        crate::ON_WORKER.with(|on| on.set(Arc::as_ptr(&self.shared) as usize));
        let counters = &self.shared.counters[self.index];
        counters.woke(self.shared.clock.now());
        loop {
            if let Some(task) = self.find_task() {
                self.run_task(task);
                continue;
            }
            // Before this worker searches or sleeps, it pays what it owes:
            // an idle worker must not withhold slots (see window.md).
            if !crate::broken("idle-keeps-slots") {
                self.release_owed();
            }
            if let Some(task) = self.search() {
                self.run_task(task);
                continue;
            }
            // Shutdown is set only once nothing is in flight, so every queue
            // is empty for good when we see it.
            if self.shared.shutdown.load(Ordering::Acquire) {
                let counters = &self.shared.counters[self.index];
                counters.stopped(self.shared.clock.now());
                return;
            }
            self.sleep();
        }
    }

    /// Keeps looking for a while before the worker sleeps: a burst often
    /// refills the queues within microseconds, and a park/unpark round trip
    /// costs more than that. At most half the workers search at once
    /// (`Idle::try_start_searching`); the others go straight to sleep, so
    /// that idle workers do not all hammer the same queues. While anybody
    /// searches, producers skip their wake-ups. See sleep.md.
    fn search(&mut self) -> Option<Task> {
        if !self.shared.idle.try_start_searching() {
            return None;
        }
        let found = self.spin();
        if self.shared.idle.stop_searching() && found.is_some() {
            // Producers may have skipped wake-ups for work beyond the task
            // we found, counting on us; hand the search on.
            self.shared.notify_one();
        }
        found
    }

    #[cfg(not(fila_loom))]
    fn spin(&mut self) -> Option<Task> {
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if let Some(task) = self.find_task() {
                return Some(task);
            }
        }
        None
    }

    /// Under loom, one more look instead of a timed spin: enough for the
    /// model to explore a search that finds work and one that gives up.
    #[cfg(fila_loom)]
    fn spin(&mut self) -> Option<Task> {
        self.find_task()
    }

    /// Depth first (`docs/design/scheduler.md#depth-first`): this worker's
    /// own follow-ons, then follow-ons stolen from other workers, and only
    /// then a newly admitted unit from the injector.
    fn find_task(&mut self) -> Option<Task> {
        if let Some(task) = self.local.pop() {
            return Some(task);
        }
        let stealers = &self.shared.stealers;
        let n = stealers.len();
        // A random first victim, so that thieves spread out instead of all
        // starting at their right-hand neighbour.
        let first = if n > 1 { self.rng.below(n) } else { 0 };
        for k in 0..n {
            let at = (first + k) % n;
            if at == self.index {
                continue;
            }
            let victim = &stealers[at];
            loop {
                match victim.steal() {
                    Steal::Success(task) => {
                        self.shared.counters[self.index].stole_task();
                        return Some(task);
                    }
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
        }
        loop {
            match self.shared.injector.steal() {
                Steal::Success(task) => return Some(task),
                Steal::Empty => return None,
                Steal::Retry => continue,
            }
        }
    }

    fn run_task(&mut self, task: Task) {
        let unit = task.unit;
        let (spawned, shared, worker) = (&mut self.spawned, &self.shared, self.index);
        let result = catch_unwind(AssertUnwindSafe(|| task.run(spawned, shared, worker)));
        self.shared.counters[self.index].ran_task();
        let spawned = match result {
            Ok(()) => self.spawned.len(),
            Err(payload) => {
                self.spawned.clear();
                unit.record_failure(panic_message(payload.as_ref()));
                0
            }
        };
        // Deliberately wrong order, taken only in a loom negative test:
        // another worker can end a follow-on before it is counted, see the
        // count reach zero, and free the unit while this task still uses it.
        if crate::broken("count-after-push") {
            self.push_spawned();
        }
        // Before the follow-ons are pushed, so that no other worker can end
        // one of them before they are counted. If this was the unit's last
        // task, this completes and frees the unit, and the window slot is
        // owed. Either way this task is done with the unit.
        if unit.end_task(spawned, &self.shared, self.index) {
            self.owe_slot();
        }
        self.push_spawned();
        let started = self.push_started();
        // The usual stage spawns one follow-on, which this worker pops
        // next; waking a sleeper for it would only make the two race for
        // it. Only surplus work is worth a wake-up.
        if spawned + started > 0 && self.local.len() > 1 {
            self.shared.notify_one();
        }
    }

    /// Pushes the held tasks that the task just run started
    /// (`Held::start`), of any unit, onto this worker's deque: last, so
    /// that this worker runs them next, the first started first. They
    /// carry on work that waited. Each was counted when it was held, and a
    /// panic of the task that started it does not discard it.
    fn push_started(&mut self) -> usize {
        crate::STARTED.with(|started| {
            let mut started = started.borrow_mut();
            let n = started.len();
            for task in started.drain(..).rev() {
                self.local.push(task);
            }
            n
        })
    }

    /// Pushes the follow-ons of the task that just ran onto this worker's
    /// deque, reversed so that the first one spawned is the first popped.
    fn push_spawned(&mut self) {
        while let Some(task) = self.spawned.pop() {
            self.local.push(task);
        }
    }

    /// Records the slot of a unit this worker just completed, and releases
    /// the slots owed once there are `release_batch` of them: one RMW on
    /// the window per batch instead of one per unit.
    fn owe_slot(&mut self) {
        self.owed += 1;
        if self.owed >= self.release_batch {
            self.release_owed();
        }
    }

    /// Releases the slots of the units this worker completed, in one RMW.
    fn release_owed(&mut self) {
        let owed = std::mem::take(&mut self.owed);
        if owed > 0 && self.shared.window.release(owed) {
            self.shared.on_drained();
        }
    }

    /// Parks until a producer wakes us. See sleep.md.
    #[cold]
    fn sleep(&mut self) {
        let shared = &self.shared;
        shared.idle.announce(self.index);
        // The re-check: work pushed before our announcement became visible
        // to its producer's `wake_one` must be seen here.
        let recheck = (!crate::broken("skip-recheck") && shared.has_work())
            || shared.shutdown.load(Ordering::Acquire);
        if recheck && shared.idle.cancel(self.index) {
            return;
        }
        // Busy time is measured here, at the park, and not around each task:
        // two clock reads a park instead of two a task.
        let counters = &shared.counters[self.index];
        counters.parked(shared.clock.now());
        shared.parkers[self.index].park();
        counters.woke(shared.clock.now());
    }
}
