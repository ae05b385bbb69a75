//! The worker loop: find a task, run it, push its follow-ons, and park when
//! there is nothing to do.

use crate::queue::{Steal, Worker};
use crate::sync::{Arc, Ordering};
use crate::task::{panic_message, Task, TaskCx};
use crate::Shared;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(crate) struct WorkerThread {
    shared: Arc<Shared>,
    index: usize,
    local: Worker<Task>,
    /// Follow-ons of the running task, pushed only once it returns.
    spawned: Vec<Task>,
}

impl WorkerThread {
    pub(crate) fn new(shared: Arc<Shared>, index: usize, local: Worker<Task>) -> WorkerThread {
        WorkerThread {
            shared,
            index,
            local,
            spawned: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        crate::ON_WORKER.with(|on| on.set(Arc::as_ptr(&self.shared) as usize));
        loop {
            if let Some(task) = self.find_task_or_spin() {
                self.run_task(task);
                continue;
            }
            // Shutdown is set only once nothing is in flight, so every queue
            // is empty for good when we see it.
            if self.shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.sleep();
        }
    }

    /// Looks for a task, spinning briefly before giving up: a burst often
    /// refills the queues within microseconds, and a park/unpark round trip
    /// costs more than that.
    fn find_task_or_spin(&mut self) -> Option<Task> {
        if let Some(task) = self.find_task() {
            return Some(task);
        }
        #[cfg(not(fila_loom))]
        {
            let backoff = crossbeam_utils::Backoff::new();
            while !backoff.is_completed() {
                backoff.snooze();
                if let Some(task) = self.find_task() {
                    return Some(task);
                }
            }
        }
        None
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
        for k in 1..n {
            let victim = &stealers[(self.index + k) % n];
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
        let Task { unit, body } = task;
        let result = {
            let mut cx = TaskCx {
                unit: &unit,
                spawned: &mut self.spawned,
                worker: self.index,
            };
            catch_unwind(AssertUnwindSafe(move || body(&mut cx)))
        };
        self.shared.counters[self.index].ran_task();
        match result {
            Ok(()) => {
                let spawned = self.spawned.len();
                // Reversed so that the first one spawned is the first popped.
                while let Some(task) = self.spawned.pop() {
                    self.local.push(task);
                }
                // The usual stage spawns one follow-on, which this worker
                // pops next; waking a sleeper for it would only make the two
                // race for it. Only surplus work is worth a wake-up.
                if spawned > 0 && self.local.len() > 1 {
                    self.shared.notify_one();
                }
            }
            Err(payload) => {
                self.spawned.clear();
                unit.record_failure(panic_message(payload.as_ref()));
            }
        }
        // If this was the unit's last task, this drop completes the unit and
        // frees its window slot.
        drop(unit);
    }

    /// Parks until a producer wakes us. See sleep.md.
    #[cold]
    fn sleep(&mut self) {
        let shared = &self.shared;
        shared.idle.announce(self.index);
        // The re-check: work pushed before our announcement became visible
        // to its producer's `wake_one` must be seen here.
        #[cfg(not(feature = "loom-broken-skip-recheck"))]
        let recheck = shared.has_work() || shared.shutdown.load(Ordering::Acquire);
        #[cfg(feature = "loom-broken-skip-recheck")]
        let recheck = shared.shutdown.load(Ordering::Acquire);
        if recheck && shared.idle.cancel(self.index) {
            return;
        }
        shared.counters[self.index].parked();
        shared.parkers[self.index].park();
    }
}
