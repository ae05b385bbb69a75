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
//! inline in the unit (`Start`). The first task takes the body out through
//! `&mut`, since nobody else holds the unit yet; the completer of a
//! one-task unit takes the completion the same way, and only a bigger
//! unit, whose other tasks may still hold it, locks. Only follow-on tasks
//! box their bodies.

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
    pub(crate) body: Body,
}

pub(crate) enum Body {
    /// The unit's first task: its body is in the unit, and this runs it.
    First(fn(&mut UnitRef, &mut Vec<Task>, usize)),
    /// A follow-on task.
    Boxed(TaskFn),
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
            start: Inline::<F, D>(Mutex::new((Some(body), Some(on_done)))),
        };
        let unit: std::sync::Arc<Unit<dyn Start>> = std::sync::Arc::new(unit);
        Task {
            unit: crate::sync::arc_from_std(unit),
            body: Body::First(run_first::<F, D>),
        }
    }
}

/// Runs the first body of a unit whose `Start` is `Inline<F, D>`.
fn run_first<F, D>(unit: &mut UnitRef, spawned: &mut Vec<Task>, worker: usize)
where
    F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
    D: FnOnce(Outcome) + Send + 'static,
{
    // Before its first task runs, nobody else holds the unit (the admitter
    // handed its only reference to this task), so the body comes out
    // without taking the lock.
    let body = Arc::get_mut(unit)
        .and_then(|unit| unit.start.as_any_mut().downcast_mut::<Inline<F, D>>())
        .and_then(|start| start.0.get_mut().0.take())
        .expect("a unit's first body runs once, while the unit is unshared");
    body(&mut TaskCx {
        unit,
        spawned,
        worker,
    });
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
    /// For `run_first`, which knows the concrete type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Calls the completion, through the lock. Called once, by the
    /// completer, when other tasks may still hold the unit.
    fn complete(&self, outcome: Outcome);
    /// Calls the completion without locking. Called once, by the completer,
    /// when it holds the only reference.
    fn complete_unshared(&mut self, outcome: Outcome);
}

/// The body and the completion in the unit's own allocation. Each is taken
/// once, usually through `&mut` while the unit is unshared; the lock serves
/// the completion of a unit whose other tasks have not yet dropped it, and
/// it is also what makes the unit `Sync` although both are only `Send`.
struct Inline<F, D>(Mutex<(Option<F>, Option<D>)>);

impl<F, D> Start for Inline<F, D>
where
    F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
    D: FnOnce(Outcome) + Send + 'static,
{
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn complete(&self, outcome: Outcome) {
        let on_done = self.0.lock().1.take();
        call_completion(on_done, outcome);
    }

    fn complete_unshared(&mut self, outcome: Outcome) {
        call_completion(self.0.get_mut().1.take(), outcome);
    }
}

fn call_completion<D: FnOnce(Outcome)>(on_done: Option<D>, outcome: Outcome) {
    let on_done = on_done.expect("a unit completes once");
    // The completion is user code too: a panic in it must not take the
    // worker down or leak the slot.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| on_done(outcome))) {
        tracing::error!(
            message = %panic_message(payload.as_ref()),
            "a unit's completion callback panicked"
        );
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

    /// Ends one task of `unit`, which spawned `spawned` follow-ons that are
    /// not yet visible to any other worker. If that was the unit's last
    /// task, completes the unit (calls its completion) and returns true:
    /// the caller then owes the window the unit's slot, and must release it
    /// (`WorkerThread::owe_slot`).
    #[must_use = "a completed unit's slot must be released"]
    pub(crate) fn end_task(
        unit: &mut UnitRef,
        spawned: usize,
        shared: &Shared,
        worker: usize,
    ) -> bool {
        match spawned {
            // The follow-on takes this task's place.
            1 => {}
            0 => {
                // AcqRel: the release half publishes this task's effects
                // (and a failure it recorded); the acquire half, in the
                // task that brings the count to zero, sees every other
                // task's, before the completion reads them.
                if unit.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
                    Self::complete(unit, shared, worker);
                    // (The broken variant has released the slot already.)
                    return cfg!(not(feature = "loom-broken-early-release"));
                }
            }
            // Relaxed, as for a reference count's increment: this task
            // still holds its own count, so nobody can see zero meanwhile,
            // and the follow-ons are published later by the deque push.
            more => {
                unit.tasks.fetch_add(more - 1, Ordering::Relaxed);
            }
        }
        false
    }

    fn complete(unit: &mut UnitRef, shared: &Shared, worker: usize) {
        let outcome = if unit.failed.load(Relaxed) {
            let message = unit.failure.lock().take().unwrap_or_default();
            shared.totals.failed.fetch_add(1, Relaxed);
            Err(TaskFailure { message })
        } else {
            shared.counters[worker].completed_unit();
            Ok(())
        };
        // Deliberately wrong order, compiled only for the loom negative test:
        // the slot frees before the caller has been told.
        #[cfg(feature = "loom-broken-early-release")]
        if shared.window.release(1) {
            shared.on_drained();
        }
        // A unit of one task is unshared here; other tasks of a bigger unit
        // may not have dropped their references yet.
        match Arc::get_mut(unit) {
            Some(unshared) => unshared.start.complete_unshared(outcome),
            None => unit.start.complete(outcome),
        }
        // The caller frees the slot, after this: a freed slot means the
        // caller has been told, so the window also bounds completions not
        // yet handled.
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
            body: Body::Boxed(Box::new(body)),
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
