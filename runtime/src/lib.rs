//! fila-runtime: a pool of pinned worker threads running a Chase-Lev
//! work-stealing scheduler behind a bounded admission window.
//!
//! There is no async executor. A caller *admits* a unit of work (say, one
//! record); the unit starts as one task and may schedule follow-on tasks
//! (say, its next stage). At most `window` units are in flight: admission
//! blocks the caller while the window is full, never a worker. A unit counts
//! until its last task finishes; then its completion callback runs and its
//! slot frees.
//!
//! ```
//! use fila_runtime::{Runtime, Workers};
//! use std::num::NonZeroUsize;
//! use std::sync::mpsc;
//!
//! let rt = Runtime::builder()
//!     .workers(Workers::Count(NonZeroUsize::new(2).unwrap()))
//!     .pin(false)
//!     .window(4)
//!     .build()
//!     .unwrap();
//! let (done, results) = mpsc::channel();
//! for i in 0..10u64 {
//!     let done = done.clone();
//!     rt.admit(
//!         move |cx| cx.spawn(move |_| { let _second_stage = i * 2; }),
//!         move |outcome| done.send((i, outcome.is_ok())).unwrap(),
//!     )
//!     .unwrap();
//! }
//! let stats = rt.shutdown();
//! assert_eq!(results.try_iter().count(), 10);
//! assert!(stats.max_in_flight <= 4);
//! ```
//!
//! The protocols are described next to the code: `window.md` (admission),
//! `sleep.md` (parking and waking), `shutdown.md` (close, drain, join).

pub mod ideal;
mod idle;

/// The deliberate bugs of the loom negative tests (see `loom-tests/run`):
/// one is switched on in a loom build by naming it in `FILA_LOOM_BUG`.
#[cfg(fila_loom)]
const LOOM_BUGS: &[&str] = &[
    "skip-recheck",
    "early-release",
    "detach-never-stops",
    "unpark-skips-lock",
    "idle-keeps-slots",
    "count-after-push",
    "hold-uncounted",
    "grow-skips-notify",
];

/// Whether the loom negative test of `bug` runs: the scheduler then takes
/// that bug's deliberately wrong path. Read once per process.
#[cfg(fila_loom)]
fn broken(bug: &str) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let chosen = std::env::var("FILA_LOOM_BUG").ok();
        if let Some(name) = &chosen {
            assert!(
                LOOM_BUGS.contains(&name.as_str()),
                "FILA_LOOM_BUG={name} names no bug; the bugs are {LOOM_BUGS:?}"
            );
        }
        chosen
    });
    debug_assert!(LOOM_BUGS.contains(&bug));
    chosen.as_deref() == Some(bug)
}

/// Outside loom builds every bug is off, and its branch compiles away.
#[cfg(not(fila_loom))]
#[inline(always)]
const fn broken(_bug: &str) -> bool {
    false
}

mod park;

/// Internals the loom models drive directly. Only under `--cfg fila_loom`.
#[cfg(fila_loom)]
#[doc(hidden)]
pub mod loom_internals {
    pub use crate::park::Parker;
}
mod queue;
mod sizer;
mod stats;
mod sync;
mod task;
mod topology;
mod window;
mod worker;

pub use sizer::{MAX_WINDOW_PER_WORKER, WINDOW_WORK_PER_WORKER};
pub use stats::{Stats, WorkerStats};
pub use task::{panic_message, Held, Outcome, TaskCx, TaskFailure};
pub use topology::{allowed_cpus, physical_cpus, Workers};
pub use window::MAX_WINDOW;

use crossbeam_utils::CachePadded;
use idle::Idle;
use park::Parker;
use queue::{Injector, Stealer};
use sizer::Sizer;
use stats::{Clock, Totals, WorkerCounters};
use std::sync::atomic::Ordering::Relaxed;
use sync::{Arc, AtomicBool, JoinHandle, Ordering};
use task::Task;
use window::{Refused, Window};

#[cfg(not(fila_loom))]
std::thread_local! {
    /// The `Shared` this thread works for, if it is a worker, as an address
    /// (0 on every other thread). A worker must never wait on its own
    /// runtime: admission from it is refused, and dropping the runtime on it
    /// detaches instead of joining (see shutdown.md).
    static ON_WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };

    /// On a worker: held tasks started by the running task (`Held::start`),
    /// which the worker pushes onto its own deque once the task returns.
    static STARTED: std::cell::RefCell<Vec<Task>> = const { std::cell::RefCell::new(Vec::new()) };
}

// The same under loom, whose threads share one OS thread: loom's
// thread-locals are per modelled thread. (Its macro has no `const` form.)
#[cfg(fila_loom)]
loom::thread_local! {
    static ON_WORKER: std::cell::Cell<usize> = std::cell::Cell::new(0);
    static STARTED: std::cell::RefCell<Vec<Task>> = std::cell::RefCell::new(Vec::new());
}

/// The default window starts at this many units per worker. Depth-first
/// scheduling, not a small window, is what keeps a burst draining in
/// arrival order, so the window can be generous: a larger one costs memory
/// for the units in flight and a longer drain, and a smaller one makes the
/// admitting thread wait for a free slot more often, which light units
/// feel most. So a default window grows, while its units are light, until
/// it holds [`WINDOW_WORK_PER_WORKER`] of work per worker, up to
/// [`MAX_WINDOW_PER_WORKER`] (`window.md`, "Resizing").
/// `benches/src/bin/burst-table.rs` measures windows against each other.
pub const DEFAULT_WINDOW_PER_WORKER: usize = 16;

/// Why a unit was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the runtime is closed to new work")]
    Closed,
    #[error("the window is full")]
    Full,
    #[error("a worker cannot admit into its own runtime: it could wait on the window it drains")]
    OnWorker,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("window must be between 1 and {max}, got {got}", max = MAX_WINDOW)]
    Window { got: usize },
    #[error("could not start worker thread {index}: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
}

/// A window size out of range, given to [`Runtime::set_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("window must be between 1 and {max}, got {got}", max = MAX_WINDOW)]
pub struct WindowError {
    pub got: usize,
}

/// State shared by the workers and the admitting threads.
pub(crate) struct Shared {
    injector: Injector<Task>,
    stealers: Box<[Stealer<Task>]>,
    parkers: Box<[CachePadded<Parker>]>,
    idle: Idle,
    window: Window,
    /// Sizes the window, unless the builder or `set_window` did.
    sizer: Option<Sizer>,
    /// Set once the window is closed and drained; workers then exit.
    shutdown: AtomicBool,
    /// Set when the `Runtime` was dropped where it could not wait (on one of
    /// its own workers, or while unwinding): whoever drains the closed window
    /// stops the workers. See shutdown.md.
    detached: AtomicBool,
    counters: Box<[CachePadded<WorkerCounters>]>,
    totals: Totals,
    /// Times the workers' busy time.
    clock: Clock,
}

impl Shared {
    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.stealers.iter().any(|s| !s.is_empty())
    }

    /// Called by an admitter that found the window full: lets the sizer,
    /// if any, measure the work per unit and resize the window.
    fn resize_window(&self) {
        if let Some(sizer) = &self.sizer {
            let now = self.clock.now();
            sizer.resize(
                now,
                || {
                    let busy = self.counters.iter().map(|c| c.busy_ns(now)).sum();
                    let units = self
                        .counters
                        .iter()
                        .map(|c| c.units_completed())
                        .sum::<u64>()
                        + self.totals.failed.load(Relaxed);
                    (busy, units)
                },
                |cap| self.window.set_cap(cap),
            );
        }
    }

    /// Wakes one parked worker, if any, after work was pushed.
    fn notify_one(&self) {
        if let Some(worker) = self.idle.wake_one() {
            self.parkers[worker].unpark();
        }
    }

    /// Tells every worker to exit. The window must be closed and drained, so
    /// that every queue is empty for good. Calling it twice is harmless.
    fn stop_workers(&self) {
        // Release pairs with the workers' acquire loads: a worker that sees
        // the flag also sees the drained queues.
        self.shutdown.store(true, Ordering::Release);
        for worker in self.idle.take_all() {
            self.parkers[worker].unpark();
        }
    }

    /// Called by the unit whose release drained a closed window. If the
    /// runtime was detached, nobody waits to stop the workers: this does.
    pub(crate) fn on_drained(&self) {
        // Acquire pairs with the release store in `detach`. The detacher
        // stores the flag before it closes the window, and the releaser saw
        // the closed bit in the value its fetch_sub returned, unless the
        // window was closed earlier; then the detacher's own close reads
        // the drained count and stops the workers itself.
        // Deliberately broken for the loom negative test: the workers of a
        // detached runtime are never told to stop.
        if broken("detach-never-stops") {
            return;
        }
        if self.detached.load(Ordering::Acquire) {
            self.stop_workers();
        }
    }

    /// Closes the window so that the workers stop once it drains, without
    /// waiting for that. Returns true if nothing was in flight: the caller
    /// must then stop the workers itself, since no release will.
    fn detach(&self) -> bool {
        self.detached.store(true, Ordering::Release);
        self.window.close().in_flight() == 0
    }
}

/// Configures a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Builder {
    workers: Workers,
    pin: bool,
    window: Option<usize>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            workers: Workers::Logical,
            pin: true,
            window: None,
        }
    }
}

impl Builder {
    /// How many workers; `Logical` (one per allowed CPU) by default.
    pub fn workers(mut self, workers: Workers) -> Self {
        self.workers = workers;
        self
    }

    /// Pin worker i to the i-th allowed CPU (default true).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// The admission window W: units in flight at most, for good (until
    /// [`Runtime::set_window`]). Left unset, the runtime sizes it: it starts
    /// at [`DEFAULT_WINDOW_PER_WORKER`] × workers and grows while the units
    /// are light (see [`DEFAULT_WINDOW_PER_WORKER`]).
    pub fn window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let (cpus, count) = topology::plan(self.workers);
        let window = self.window.unwrap_or(DEFAULT_WINDOW_PER_WORKER * count);
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(BuildError::Window { got: window });
        }
        let sizer = self
            .window
            .is_none()
            .then(|| Sizer::new(count, window, MAX_WINDOW));
        let locals: Vec<_> = (0..count).map(|_| queue::Worker::new_lifo()).collect();
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            stealers: locals.iter().map(|w| w.stealer()).collect(),
            parkers: (0..count)
                .map(|_| CachePadded::new(Parker::new()))
                .collect(),
            idle: Idle::new(count),
            window: Window::new(window),
            sizer,
            shutdown: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            counters: (0..count).map(|_| CachePadded::default()).collect(),
            totals: Totals::default(),
            clock: Clock::default(),
        });
        let mut rt = Runtime {
            shared: shared.clone(),
            threads: Vec::with_capacity(count),
            cpus: Vec::with_capacity(count),
        };
        for (index, local) in locals.into_iter().enumerate() {
            let cpu = (self.pin && !cpus.is_empty() && cfg!(not(fila_loom)))
                .then(|| cpus[index % cpus.len()]);
            let worker = worker::WorkerThread::new(shared.clone(), index, local);
            let spawned = sync::spawn(format!("fila-worker-{index}"), move || {
                if let Some(cpu) = cpu {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        tracing::warn!(
                            worker = index,
                            cpu,
                            "could not pin worker; it runs unpinned"
                        );
                    }
                }
                worker.run();
            });
            match spawned {
                Ok(handle) => {
                    rt.threads.push(handle);
                    rt.cpus.push(cpu);
                }
                // Dropping `rt` shuts down the workers already started.
                Err(source) => return Err(BuildError::Spawn { index, source }),
            }
        }
        Ok(rt)
    }
}

/// A pool of workers behind an admission window. `Runtime` is `Sync`:
/// several threads may admit through a shared reference.
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    cpus: Vec<Option<usize>>,
}

/// A window slot held by an admitter and not yet used. Proof that the unit
/// about to be submitted fits in the window. Dropping it frees the slot.
#[must_use = "a slot holds window capacity until it is submitted or dropped"]
pub struct Slot<'rt> {
    shared: &'rt Arc<Shared>,
}

impl Slot<'_> {
    /// Submits a unit that starts as `task`; `on_done` runs once, on a
    /// worker, after the unit's last task has finished and before its slot
    /// frees. Keep `on_done` short: it runs on the worker's time.
    pub fn submit<F, D>(self, task: F, on_done: D)
    where
        F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
        D: FnOnce(Outcome) + Send + 'static,
    {
        let shared = self.shared;
        // The slot now belongs to the unit, which frees it when it completes.
        std::mem::forget(self);
        shared.injector.push(Task::first(task, on_done));
        shared.notify_one();
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.shared.window.release(1) {
            self.shared.on_drained();
        }
    }
}

impl Runtime {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn workers(&self) -> usize {
        self.shared.parkers.len()
    }

    /// The window W now (a window the runtime sizes changes as it runs).
    pub fn window(&self) -> usize {
        self.shared.window.cap()
    }

    /// Sets the window W for good: the runtime sizes it no more. Units in
    /// flight beyond a smaller W run to the end, and no unit is admitted
    /// until they are below it; a larger W lets blocked admitters in at
    /// once.
    pub fn set_window(&self, window: usize) -> Result<(), WindowError> {
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(WindowError { got: window });
        }
        let set = || self.shared.window.set_cap(window);
        match &self.shared.sizer {
            Some(sizer) => sizer.stop(set),
            None => set(),
        }
        Ok(())
    }

    /// Waits for a window slot. Blocks while `window` units are in flight.
    pub fn reserve(&self) -> Result<Slot<'_>, AdmitError> {
        self.refuse_on_worker()?;
        self.slot(Window::acquire)
    }

    /// Takes a window slot if one is free now.
    pub fn try_reserve(&self) -> Result<Slot<'_>, AdmitError> {
        self.slot(Window::try_acquire)
    }

    /// A slot from the fast path, or, when the window is full, from `full`
    /// once the sizer (if any) has had a look.
    fn slot(&self, full: fn(&Window) -> Result<(), Refused>) -> Result<Slot<'_>, AdmitError> {
        let window = &self.shared.window;
        match window.try_acquire() {
            Err(Refused::Full) => {
                self.shared.resize_window();
                full(window)
            }
            taken => taken,
        }
        .map_err(refused)?;
        Ok(Slot {
            shared: &self.shared,
        })
    }

    /// `reserve` then `submit`: blocks while the window is full.
    pub fn admit<F, D>(&self, task: F, on_done: D) -> Result<(), AdmitError>
    where
        F: for<'a> FnOnce(&mut TaskCx<'a>) + Send + 'static,
        D: FnOnce(Outcome) + Send + 'static,
    {
        self.reserve()?.submit(task, on_done);
        Ok(())
    }

    /// Stops admission. Blocked and later admitters get `Closed`; units in
    /// flight run to the end. Call `shutdown` to wait for them.
    pub fn close(&self) {
        self.shared.window.close();
    }

    /// Closes, then waits until no unit is in flight. The workers stay up
    /// (parked) until `shutdown`; a driver uses this to drain before it
    /// flushes and commits, while it still holds only `&Runtime`.
    ///
    /// # Panics
    ///
    /// On one of this runtime's own workers, where it would wait for the
    /// very unit that called it.
    pub fn close_and_drain(&self) {
        assert!(
            !self.on_own_worker(),
            "Runtime::close_and_drain called from one of its own tasks: it would wait for itself"
        );
        self.shared.window.close();
        self.shared.window.wait_drained();
    }

    /// Whether `close` (or `shutdown`) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.window.load().is_closed()
    }

    /// Admitters blocked in `reserve` or `admit` right now, waiting for a
    /// slot of a full window. A snapshot that may change as soon as it is
    /// read; it is exact when nobody is admitting or releasing.
    pub fn blocked_admitters(&self) -> usize {
        self.shared.window.load().waiters() as usize
    }

    /// Units admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.window.load().in_flight() as usize
    }

    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        // Separate loads, not one snapshot: while units run, the derived
        // admission count can be off by the units that moved in between.
        let completed: u64 = shared.counters.iter().map(|c| c.units_completed()).sum();
        let failed = shared.totals.failed.load(Relaxed);
        let in_flight = self.in_flight();
        let now = shared.clock.now();
        Stats {
            workers: shared
                .counters
                .iter()
                .zip(&self.cpus)
                .map(|(c, &cpu)| c.snapshot(cpu, now))
                .collect(),
            window: shared.window.cap(),
            in_flight,
            max_in_flight: shared.window.max_in_flight() as usize,
            admitted: completed + failed + in_flight as u64,
            completed,
            failed,
        }
    }

    /// Closes, waits for every unit in flight to finish, stops and joins
    /// every worker, and returns the final statistics. See shutdown.md.
    ///
    /// # Panics
    ///
    /// On one of this runtime's own workers: it cannot wait for the task
    /// that called it. The panic drops the runtime, which then detaches
    /// as described under `Drop`.
    pub fn shutdown(mut self) -> Stats {
        assert!(
            !self.on_own_worker(),
            "Runtime::shutdown called from one of its own tasks: it would wait for itself; drop the runtime instead"
        );
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        let shared = &self.shared;
        shared.window.close();
        shared.window.wait_drained();
        shared.stop_workers();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a worker thread panicked outside any task");
            }
        }
    }

    /// Lets the workers finish what is in flight and exit on their own.
    fn detach(&mut self) {
        // Dropping the join handles detaches the threads.
        self.threads.clear();
        if self.shared.detach() {
            self.shared.stop_workers();
        }
    }

    /// Whether the calling thread is one of this runtime's workers.
    fn on_own_worker(&self) -> bool {
        ON_WORKER.with(|on| on.get()) == Arc::as_ptr(&self.shared) as usize
    }

    fn refuse_on_worker(&self) -> Result<(), AdmitError> {
        if self.on_own_worker() {
            return Err(AdmitError::OnWorker);
        }
        Ok(())
    }
}

/// Dropping a `Runtime` shuts it down as [`Runtime::shutdown`] does: it
/// waits for every unit in flight and joins every worker. Where it must not
/// wait, on one of the runtime's own workers (a task held the last
/// reference) or while the thread unwinds from a panic, it *detaches*
/// instead: admission closes at once, the units in flight still run to
/// the end and report, and the workers exit by themselves once the window
/// drains. Nothing is lost either way; only the join is skipped.
impl Drop for Runtime {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Blocking here while unwinding could hang the panic. (Under loom
            // a panic means the model already failed, and any further loom
            // operation would abort the process.)
            #[cfg(not(fila_loom))]
            self.detach();
            return;
        }
        if self.on_own_worker() {
            // Waiting here would wait for the unit this thread is running.
            self.detach();
            return;
        }
        self.stop();
    }
}

fn refused(r: Refused) -> AdmitError {
    match r {
        Refused::Full => AdmitError::Full,
        Refused::Closed => AdmitError::Closed,
    }
}
