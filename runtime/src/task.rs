//! Units, tasks, and the context a task runs in.
//!
//! A *unit* is what the window counts: one admitted piece of work, such as a
//! record. It starts as one task and may grow follow-on tasks. Every task
//! holds an `Arc` to its unit, so the unit's strong count is its number of
//! live tasks: when the last task is dropped (run or not), `Unit::drop`
//! reports the outcome and frees the window slot. Nothing else needs to count.

use crate::sync::{Arc, Mutex};
use crate::Shared;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The body of a task.
pub(crate) type TaskFn = Box<dyn for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static>;

/// Called once when a unit's last task has finished.
pub(crate) type DoneFn = Box<dyn FnOnce(Outcome) + Send + 'static>;

/// How a unit ended.
pub type Outcome = Result<(), TaskFailure>;

/// A task of the unit panicked. Its follow-on tasks, if it had spawned any,
/// were discarded; tasks spawned earlier by other tasks still ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task panicked: {message}")]
pub struct TaskFailure {
    /// The panic payload, if it was a string.
    pub message: String,
}

pub(crate) struct Task {
    pub(crate) unit: Arc<Unit>,
    pub(crate) body: TaskFn,
}

pub(crate) struct Unit {
    shared: Arc<Shared>,
    /// Set by the first panicking task. Read in `drop`; the `Arc` count's
    /// release/acquire on the last drop makes a relaxed read enough.
    failed: AtomicBool,
    /// What only the failure path and the last drop touch. The lock is
    /// taken only on the failure path; `drop` has `&mut self` and reaches
    /// the contents without locking. Keeping the completion behind it is
    /// also what makes `Unit` `Sync` although the completion is only
    /// `Send`: a `&Unit` shared between tasks never reaches it unlocked.
    cold: Mutex<Cold>,
}

struct Cold {
    /// The first panic message of the unit.
    failure: Option<String>,
    /// Taken and called once, by the last drop.
    on_done: Option<DoneFn>,
}

impl Unit {
    pub(crate) fn new(shared: Arc<Shared>, on_done: DoneFn) -> Unit {
        Unit {
            shared,
            failed: AtomicBool::new(false),
            cold: Mutex::new(Cold {
                failure: None,
                on_done: Some(on_done),
            }),
        }
    }

    #[cold]
    pub(crate) fn record_failure(&self, message: String) {
        let mut cold = self.cold.lock();
        if cold.failure.is_none() {
            cold.failure = Some(message);
        }
        self.failed.store(true, Relaxed);
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let cold = self.cold.get_mut();
        let outcome = if self.failed.load(Relaxed) {
            let message = cold.failure.take().unwrap_or_default();
            Err(TaskFailure { message })
        } else {
            Ok(())
        };
        let on_done = cold.on_done.take();
        if outcome.is_err() {
            self.shared.totals.failed.fetch_add(1, Relaxed);
        }
        // Deliberately wrong order, compiled only for the loom negative test:
        // the slot frees before the caller has been told.
        #[cfg(feature = "loom-broken-early-release")]
        let drained = self.shared.window.release();
        if let Some(on_done) = on_done {
            // The completion is user code too: a panic in it must not take
            // the worker down or leak the slot.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| on_done(outcome))) {
                tracing::error!(
                    message = %panic_message(payload.as_ref()),
                    "a unit's completion callback panicked"
                );
            }
        }
        // Only after the completion ran: a freed slot means the caller has
        // been told, so the window also bounds completions not yet handled.
        #[cfg(not(feature = "loom-broken-early-release"))]
        let drained = self.shared.window.release();
        if drained {
            self.shared.on_drained();
        }
    }
}

/// What a running task can do besides compute: schedule follow-on tasks of
/// its own unit.
pub struct TaskCx<'a> {
    pub(crate) unit: &'a Arc<Unit>,
    pub(crate) spawned: &'a mut Vec<Task>,
    pub(crate) worker: usize,
}

impl TaskCx<'_> {
    /// Schedules `body` as another task of this unit. It runs after the
    /// current task returns, usually next on this same worker (depth
    /// first), and it never waits for a window slot. If the current task
    /// panics, what it spawned is discarded.
    pub fn spawn<F>(&mut self, body: F)
    where
        F: for<'b> FnOnce(&mut TaskCx<'b>) + Send + 'static,
    {
        self.spawned.push(Task {
            unit: self.unit.clone(),
            body: Box::new(body),
        });
    }

    /// The index of the worker running this task, in `0..workers`.
    pub fn worker_index(&self) -> usize {
        self.worker
    }
}

/// The text of a panic payload, as caught by `catch_unwind` or seen by a
/// panic hook: the message itself for the `&str` and `String` payloads
/// that `panic!` produces, and a fixed placeholder for any other payload.
/// Never panics. The runtime reports task panics
/// ([`TaskFailure::message`]) with it.
pub fn panic_message(payload: &dyn Any) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::panic_message;

    #[test]
    fn panic_message_reads_str_and_string_payloads_and_names_others() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let literal = caught(|| panic!("a literal"));
        let formatted = caught(|| panic!("formatted {}", 7));
        let other = caught(|| std::panic::panic_any(42u32));
        std::panic::set_hook(hook);
        assert_eq!(panic_message(literal.as_ref()), "a literal");
        assert_eq!(panic_message(formatted.as_ref()), "formatted 7");
        assert_eq!(panic_message(other.as_ref()), "non-string panic payload");
    }
}
