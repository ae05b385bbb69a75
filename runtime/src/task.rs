//! Units, tasks, and the context a task runs in.
//!
//! A *unit* is what the window counts: one admitted piece of work, such as a
//! record. It starts as one task and may grow follow-on tasks. The unit
//! counts its own live tasks (`Unit::tasks`); the task whose end brings the
//! count to zero *completes* the unit on its worker: it reports the outcome
//! and frees the window slot.
//!
//! That count is also what keeps the unit's memory alive: there is no
//! reference count beside it. Each live task holds a plain pointer to the
//! unit (`UnitPtr`), and the completer, which is the last of them, frees
//! the unit once its completion has returned. A task does not touch its unit
//! after its own end has been counted, unless it is the completer.
//!
//! One allocation per unit: the admitted body and the completion live
//! inline in the unit (`Inline`). The first task takes the body out while
//! it is the unit's only task, and the completer takes the completion once
//! every other task has ended, so neither needs a lock. A unit whose single
//! task ends without spawning sees a count of one and needs no atomic
//! read-modify-write at all. Only follow-on tasks box their bodies.
//!
//! A task may also *hold* a follow-on (`TaskCx::hold`): counted now, given
//! its body and queued later by whoever holds it, from any thread. Until
//! then the unit stays in flight. That is how a stage makes a record wait
//! for another record without blocking a worker: the waiting record's unit
//! holds a follow-on, and the task that ends the wait starts it.

use crate::sync::{Arc, AtomicUsize, Mutex, Ordering, UnsafeCell};
use crate::Shared;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
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

/// The address of a unit, held by each of its tasks. The unit stays
/// allocated while any of its tasks is live: queued, running, or spawned and
/// not yet pushed. (A follow-on discarded because its parent panicked was
/// never counted; its parent still is until it ends.) So a task may use its
/// `UnitPtr` until its end is counted, in `end_task`, and the completer
/// until it frees the unit.
#[derive(Clone, Copy)]
pub(crate) struct UnitPtr(NonNull<Unit<dyn Start>>);

// SAFETY: the unit is shared by its tasks, which may run on any worker. What
// several tasks touch at once (`tasks`, `failed`, `failure`) is atomic or
// locked; `start` is touched only by one task at a time, as `Start` says.
// The body and completion inside are `Send`.
unsafe impl Send for UnitPtr {}

impl UnitPtr {
    fn unit(&self) -> &Unit<dyn Start> {
        // SAFETY: a `UnitPtr` is used only by a live task of the unit, or by
        // its completer before it frees it (see the type's doc), and the
        // unit is allocated for as long.
        let unit = unsafe { self.0.as_ref() };
        #[cfg(fila_loom)]
        unit.memory.with(|memory| {
            // SAFETY: loom checks this read against the free's write.
            let allocated = unsafe { (*memory).is_some() };
            assert!(allocated, "a task used its unit after the unit was freed");
        });
        unit
    }

    /// Frees the unit. Only its completer calls this, once, and nobody uses
    /// the unit afterwards.
    fn free(self) {
        // Under loom the memory stays allocated (a few bytes per unit a
        // model run), so that a late use finds the cell it checks.
        #[cfg(fila_loom)]
        self.unit().memory.with_mut(|memory| {
            // SAFETY: loom checks this write against every use's read.
            drop(unsafe { (*memory).take() });
        });
        // SAFETY: the unit came from `Box::leak` in `Task::first`, and the
        // caller is its completer: every other task has ended, and the
        // caller does not use it again.
        #[cfg(not(fila_loom))]
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

pub(crate) struct Task {
    pub(crate) unit: UnitPtr,
    pub(crate) body: Body,
}

pub(crate) enum Body {
    /// The unit's first task: its body is in the unit.
    First,
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
        let unit: Box<Unit<dyn Start>> = Box::new(Unit {
            tasks: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            #[cfg(fila_loom)]
            memory: UnsafeCell::new(Some(crate::sync::Arc::new(()))),
            start: Inline::<F, D> {
                body: UnsafeCell::new(Some(body)),
                on_done: UnsafeCell::new(Some(on_done)),
            },
        });
        Task {
            unit: UnitPtr(NonNull::from(Box::leak(unit))),
            body: Body::First,
        }
    }

    /// Runs this task's body; the follow-ons it spawns go to `spawned`.
    /// A panic in the body propagates to the caller.
    pub(crate) fn run(self, spawned: &mut Vec<Task>, shared: &Arc<Shared>, worker: usize) {
        let unit = self.unit;
        let mut cx = TaskCx {
            unit,
            spawned,
            shared,
            worker,
        };
        match self.body {
            // SAFETY: this is the unit's first task, and while it runs it is
            // the unit's only one: what it spawns is pushed after it returns.
            Body::First => unsafe { unit.unit().start.run_first(&mut cx) },
            Body::Boxed(body) => body(&mut cx),
        }
    }
}

pub(crate) struct Unit<S: ?Sized> {
    /// Live tasks: queued, running, spawned and not yet pushed, or held and
    /// not yet started (`Held`). A task
    /// that ends having spawned k follow-ons changes it by k − 1, so the
    /// usual stage that spawns exactly one costs no RMW at all.
    tasks: AtomicUsize,
    /// Set by the first panicking task. Read by the completer, whose acquire
    /// on `tasks` orders it after every task's end.
    failed: AtomicBool,
    /// The first panic message. Locked only on the failure path.
    failure: Mutex<Option<String>>,
    /// Under loom, stands for the unit's memory, which loom cannot see:
    /// `Some` while it is allocated. Every use of the unit reads this cell
    /// and freeing writes it, so loom reports a use that is not ordered
    /// before the free, and the token inside leaks if a unit is never freed.
    #[cfg(fila_loom)]
    memory: UnsafeCell<Option<crate::sync::Arc<()>>>,
    /// The admitted body and the completion.
    start: S,
}

/// What is generic about a unit: its first body and its completion.
pub(crate) trait Start: Send {
    /// Takes the first body out of the unit and runs it.
    ///
    /// # Safety
    ///
    /// Called once, by the unit's first task, while it is the unit's only
    /// task.
    unsafe fn run_first(&self, cx: &mut TaskCx<'_>);

    /// Takes the completion out of the unit and calls it.
    ///
    /// # Safety
    ///
    /// Called once, by the completer, after every other task of the unit
    /// has ended (its end counted in `Unit::tasks`).
    unsafe fn complete(&self, outcome: Outcome);
}

/// The body and the completion in the unit's own allocation. Each is taken
/// once, by a task that has the unit to itself at that moment (see `Start`),
/// so the cells need no lock. Under loom they check that claim.
struct Inline<F, D> {
    body: UnsafeCell<Option<F>>,
    on_done: UnsafeCell<Option<D>>,
}

impl<F, D> Start for Inline<F, D>
where
    F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
    D: FnOnce(Outcome) + Send + 'static,
{
    unsafe fn run_first(&self, cx: &mut TaskCx<'_>) {
        // SAFETY: the caller is the only task of the unit (see `Start`).
        let body = self.body.with_mut(|body| unsafe { (*body).take() });
        let body = body.expect("a unit's first body runs once");
        body(cx);
    }

    unsafe fn complete(&self, outcome: Outcome) {
        // SAFETY: every other task has ended (see `Start`), and their ends
        // happen-before this through the acquire on `tasks`.
        let on_done = self
            .on_done
            .with_mut(|on_done| unsafe { (*on_done).take() });
        call_completion(on_done, outcome);
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

impl UnitPtr {
    #[cold]
    pub(crate) fn record_failure(self, message: String) {
        let unit = self.unit();
        let mut failure = unit.failure.lock();
        if failure.is_none() {
            *failure = Some(message);
        }
        unit.failed.store(true, Relaxed);
    }

    /// Ends one task of the unit, which spawned `spawned` follow-ons that are
    /// not yet visible to any other worker. If that was the unit's last
    /// task, completes the unit (calls its completion), frees it, and
    /// returns true: the caller then owes the window the unit's slot, and
    /// must release it (`WorkerThread::owe_slot`). Either way the caller
    /// must not use this `UnitPtr` again; its follow-ons hold their own.
    #[must_use = "a completed unit's slot must be released"]
    pub(crate) fn end_task(self, spawned: usize, shared: &Shared, worker: usize) -> bool {
        let tasks = &self.unit().tasks;
        match spawned {
            // The follow-on takes this task's place.
            1 => {}
            0 => {
                // The count includes this task. If it reads one, no other
                // task of the unit exists and none can appear (only live
                // tasks spawn), so this task is the last without an RMW.
                // Acquire: it reads the value the last other task's
                // fetch_sub left, and that task's release half (and all
                // earlier ones, through the release sequence) publishes its
                // effects, and a failure it recorded, to the completion.
                // Otherwise AcqRel: the release half publishes this task's
                // effects; the acquire half, in the task that brings the
                // count to zero, sees every other task's.
                if tasks.load(Ordering::Acquire) == 1 || tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.complete(shared, worker);
                    // (The broken variant has released the slot already.)
                    return !crate::broken("early-release");
                }
            }
            // Relaxed, as for a reference count's increment: this task
            // still holds its own count, so nobody can see zero meanwhile,
            // and the follow-ons are published later by the deque push.
            more => {
                tasks.fetch_add(more - 1, Ordering::Relaxed);
            }
        }
        false
    }

    /// Completes and frees the unit. Called by its last task only.
    fn complete(self, shared: &Shared, worker: usize) {
        let unit = self.unit();
        let outcome = if unit.failed.load(Relaxed) {
            let message = unit.failure.lock().take().unwrap_or_default();
            shared.totals.failed.fetch_add(1, Relaxed);
            Err(TaskFailure { message })
        } else {
            shared.counters[worker].completed_unit();
            Ok(())
        };
        // Deliberately wrong order, taken only in a loom negative test:
        // the slot frees before the caller has been told.
        if crate::broken("early-release") && shared.window.release(1) {
            shared.on_drained();
        }
        // SAFETY: the count reached zero through this task, so every other
        // task of the unit has ended.
        unsafe { unit.start.complete(outcome) };
        // No task is left to use the unit: the others have ended, and this
        // one does not touch it again.
        self.free();
        // The caller frees the slot, after this: a freed slot means the
        // caller has been told, so the window also bounds completions not
        // yet handled.
    }
}

/// What a running task can do besides compute: schedule follow-on tasks of
/// its own unit, now or later.
pub struct TaskCx<'a> {
    pub(crate) unit: UnitPtr,
    pub(crate) spawned: &'a mut Vec<Task>,
    pub(crate) shared: &'a Arc<Shared>,
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
            unit: self.unit,
            body: Body::Boxed(Box::new(body)),
        });
    }

    /// Holds a follow-on task of this unit whose body is given later, by
    /// [`Held::start`], on any thread. The unit stays in flight, and its
    /// window slot taken, until that task has run: a record can wait for
    /// another without a worker waiting with it. Dropping the `Held`
    /// unstarted starts an empty task, so the unit still completes. If the
    /// current task panics, the `Held` it made stands: it was counted, and
    /// runs or drops like any other.
    pub fn hold(&mut self) -> Held {
        // Relaxed, as in `end_task` for spawned follow-ons: this task still
        // holds its own count, so nobody can see zero meanwhile, and the
        // held task is published later by the queue push in `start`.
        // Deliberately left out in a loom negative test:
        // the unit can complete and free itself before the held task runs.
        if !crate::broken("hold-uncounted") {
            self.unit.unit().tasks.fetch_add(1, Ordering::Relaxed);
        }
        Held {
            unit: Some(self.unit),
            shared: self.shared.clone(),
        }
    }

    /// The index of the worker running this task, in `0..workers`.
    pub fn worker_index(&self) -> usize {
        self.worker
    }
}

/// A follow-on task of a unit, counted but not yet queued: see
/// [`TaskCx::hold`]. `Send`, so that another record's task (or any
/// thread) can start it.
#[must_use = "a held task keeps its unit in flight until it is started or dropped"]
pub struct Held {
    /// `None` once started.
    unit: Option<UnitPtr>,
    shared: Arc<Shared>,
}

impl Held {
    /// Queues `body` as the held task, a task of the held unit: what it
    /// spawns belongs to that unit, and a panic in it fails that unit.
    /// Started by a task on one of the runtime's workers, it goes onto that
    /// worker's deque once the task returns (other workers may steal it);
    /// from any other thread, onto the shared queue.
    pub fn start<F>(mut self, body: F)
    where
        F: for<'b> FnOnce(&mut TaskCx<'b>) + Send + 'static,
    {
        self.push(Box::new(body));
    }

    fn push(&mut self, body: TaskFn) {
        let Some(unit) = self.unit.take() else {
            return;
        };
        let task = Task {
            unit,
            body: Body::Boxed(body),
        };
        // The held count keeps the unit allocated until the task's own end
        // is counted, wherever the task waits meanwhile.
        let shared = Arc::as_ptr(&self.shared) as usize;
        if crate::ON_WORKER.with(|on| on.get()) == shared {
            // Started by a task on one of the runtime's own workers: onto
            // that worker's deque once the task returns, as its spawned
            // follow-ons go, so that no worker is woken for work this one
            // will reach anyway (`WorkerThread::push_started`).
            crate::STARTED.with(|started| started.borrow_mut().push(task));
        } else {
            // The shared queue publishes it, as `Slot::submit` does a
            // unit's first task.
            self.shared.injector.push(task);
            self.shared.notify_one();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.push(Box::new(|_| {}));
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
