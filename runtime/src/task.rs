//! Units, tasks, and the context a task runs in.
//!
//! A *unit* is what the window counts: one admitted piece of work, such as a
//! record. It starts as one task and may grow follow-on tasks. The unit
//! counts its own live tasks (`Unit::tasks`); the task whose end brings the
//! count to zero *completes* the unit on its worker: it reports the outcome
//! and frees the window slot. The `Arc` around a unit only manages its
//! memory.
//!
//! One allocation per unit: the admitted body and the completion live
//! inline in the unit (`Start`), behind a lock that each takes once,
//! uncontended. Only follow-on tasks box their bodies.

use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};
use crate::Shared;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The body of a follow-on task.
pub(crate) type TaskFn = Box<dyn for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static>;

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

/// A unit with its admitted body and completion erased to `dyn Start`.
pub(crate) type UnitRef = Arc<Unit<dyn Start>>;

pub(crate) struct Task {
    pub(crate) unit: UnitRef,
    /// `None` for the unit's first task, whose body is in the unit.
    pub(crate) body: Option<TaskFn>,
}

impl Task {
    /// The first task of a new unit, which holds `body` and `on_done`.
    pub(crate) fn first<F, D>(body: F, on_done: D) -> Task
    where
        F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
        D: FnOnce(Outcome) + Send + 'static,
    {
        let unit = Unit {
            tasks: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            start: Inline(Mutex::new((Some(body), Some(on_done)))),
        };
        let unit: std::sync::Arc<Unit<dyn Start>> = std::sync::Arc::new(unit);
        Task {
            unit: crate::sync::arc_from_std(unit),
            body: None,
        }
    }

    /// Runs the task's body with `cx`.
    pub(crate) fn run(body: Option<TaskFn>, cx: &mut TaskCx<'_>) {
        match body {
            Some(body) => body(cx),
            None => cx.unit.start.run_first(cx),
        }
    }
}

pub(crate) struct Unit<S: ?Sized> {
    /// Live tasks: queued, running, or spawned and not yet pushed. A task
    /// that ends having spawned k follow-ons changes it by k − 1, so the
    /// usual stage that spawns exactly one costs no RMW at all.
    tasks: AtomicUsize,
    /// Set by the first panicking task. Read by the completer, whose acquire
    /// on `tasks` orders it after every task's end.
    failed: AtomicBool,
    /// The first panic message. Locked only on the failure path.
    failure: Mutex<Option<String>>,
    /// The admitted body and the completion.
    start: S,
}

/// What is generic about a unit: its first body and its completion.
pub(crate) trait Start: Send + Sync {
    /// Runs the first body. Called once, by the unit's first task.
    fn run_first(&self, cx: &mut TaskCx<'_>);
    /// Calls the completion. Called once, by the completer.
    fn complete(&self, outcome: Outcome);
}

/// The body and the completion in the unit's own allocation. Each is taken
/// once; the lock (never contended: the first task and the completer are
/// ordered by `tasks`) is also what makes the unit `Sync` although both are
/// only `Send`.
struct Inline<F, D>(Mutex<(Option<F>, Option<D>)>);

impl<F, D> Start for Inline<F, D>
where
    F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
    D: FnOnce(Outcome) + Send + 'static,
{
    fn run_first(&self, cx: &mut TaskCx<'_>) {
        let body = self.0.lock().0.take();
        body.expect("a unit's first body runs once")(cx);
    }

    fn complete(&self, outcome: Outcome) {
        let on_done = self.0.lock().1.take();
        let on_done = on_done.expect("a unit completes once");
        // The completion is user code too: a panic in it must not take
        // the worker down or leak the slot.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| on_done(outcome))) {
            tracing::error!(
                message = %panic_message(payload.as_ref()),
                "a unit's completion callback panicked"
            );
        }
    }
}

impl Unit<dyn Start> {
    #[cold]
    pub(crate) fn record_failure(&self, message: String) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            *failure = Some(message);
        }
        self.failed.store(true, Relaxed);
    }

    /// Ends one task of this unit, which spawned `spawned` follow-ons that
    /// are not yet visible to any other worker. If that was the unit's last
    /// task, completes the unit: calls its completion, then frees its slot.
    pub(crate) fn end_task(&self, spawned: usize, shared: &Shared) {
        match spawned {
            // The follow-on takes this task's place.
            1 => {}
            0 => {
                // AcqRel: the release half publishes this task's effects
                // (and a failure it recorded); the acquire half, in the
                // task that brings the count to zero, sees every other
                // task's, before the completion reads them.
                if self.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.complete(shared);
                }
            }
            // Relaxed, as for a reference count's increment: this task
            // still holds its own count, so nobody can see zero meanwhile,
            // and the follow-ons are published later by the deque push.
            more => {
                self.tasks.fetch_add(more - 1, Ordering::Relaxed);
            }
        }
    }

    #[cold]
    fn complete(&self, shared: &Shared) {
        let outcome = if self.failed.load(Relaxed) {
            let message = self.failure.lock().take().unwrap_or_default();
            shared.totals.failed.fetch_add(1, Relaxed);
            Err(TaskFailure { message })
        } else {
            Ok(())
        };
        // Deliberately wrong order, compiled only for the loom negative test:
        // the slot frees before the caller has been told.
        #[cfg(feature = "loom-broken-early-release")]
        let drained = shared.window.release();
        self.start.complete(outcome);
        // Only after the completion ran: a freed slot means the caller has
        // been told, so the window also bounds completions not yet handled.
        #[cfg(not(feature = "loom-broken-early-release"))]
        let drained = shared.window.release();
        if drained {
            shared.on_drained();
        }
    }
}

/// What a running task can do besides compute: schedule follow-on tasks of
/// its own unit.
pub struct TaskCx<'a> {
    pub(crate) unit: &'a UnitRef,
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
            body: Some(Box::new(body)),
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
