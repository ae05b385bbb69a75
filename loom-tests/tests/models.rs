//! loom models of the real fila-runtime code (built with `--cfg fila_loom`,
//! where its `sync` shim and queues switch to loom's types). Run them with
//! `loom-tests/run`; a plain `cargo test` compiles this file to nothing.
//!
//! Test bookkeeping mostly uses `std` atomics on purpose: it is not under
//! test, and keeping it out of loom keeps the explored state space to the
//! runtime's. Where the bookkeeping stands in for a real synchronizing
//! callback, it uses loom's.
#![cfg(fila_loom)]

use fila_runtime::loom_internals::Parker;
use fila_runtime::{AdmitError, Held, Outcome, Runtime, Workers};
use loom::thread;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// How far loom explores a model: every execution with at most this many
/// preemptions (switches away from a thread that could have run on), or
/// every execution. Switches at a blocking point (a lock held elsewhere, a
/// condvar wait, a park, a join) are not preemptions and are always
/// explored. See "Bounds" in `loom-tests/README.md`.
#[derive(Clone, Copy)]
enum Bound {
    Preemptions(usize),
    Unbounded,
}

/// Runs `f` under loom within `bound`, and prints how many executions that
/// took. `LOOM_MAX_PREEMPTIONS` can raise a model's bound, never lower it.
///
/// Unlike `loom::model`, this installs no log subscriber, so `LOOM_LOG`
/// prints nothing; to trace a failing model, call `loom::model` here for
/// the while (it takes its bound from `LOOM_MAX_PREEMPTIONS` alone).
fn model<F>(bound: Bound, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = match (bound, builder.preemption_bound) {
        (Bound::Unbounded, _) => None,
        (Bound::Preemptions(own), env) => Some(env.map_or(own, |env| env.max(own))),
    };
    let described = match builder.preemption_bound {
        Some(n) => format!("preemption bound {n}"),
        None => "no preemption bound".to_owned(),
    };
    let executions = Arc::new(AtomicUsize::new(0));
    let counted = executions.clone();
    let started = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, SeqCst);
        f();
    });
    eprint!(
        "{} executions, {described}, {:.1} s ... ",
        executions.load(SeqCst),
        started.elapsed().as_secs_f64()
    );
}

/// Opens a negative test: the runtime must take `bug`'s deliberately wrong
/// path, which `FILA_LOOM_BUG` switches on for the whole process. Run alone
/// (`loom-tests/run` does), so that no other model runs with the bug.
fn with_bug(bug: &str) {
    assert_eq!(
        std::env::var("FILA_LOOM_BUG").ok().as_deref(),
        Some(bug),
        "a negative test: run it alone with FILA_LOOM_BUG={bug}, as loom-tests/run does"
    );
}

fn runtime(workers: usize, window: usize) -> Runtime {
    Runtime::builder()
        .workers(Workers::Count(NonZeroUsize::new(workers).unwrap()))
        .pin(false)
        .window(window)
        .build()
        .unwrap()
}

/// Outcomes reported per unit, in the order they were reported.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<(usize, Outcome)>>>);

impl Reports {
    fn on_done(&self, unit: usize) -> impl FnOnce(Outcome) + Send + 'static {
        let reports = self.0.clone();
        move |outcome| reports.lock().unwrap().push((unit, outcome))
    }

    fn sorted(&self) -> Vec<(usize, Outcome)> {
        let mut all = self.0.lock().unwrap().clone();
        all.sort_by_key(|(unit, _)| *unit);
        all
    }
}

fn ok(units: std::ops::Range<usize>) -> Vec<(usize, Outcome)> {
    units.map(|u| (u, Ok(()))).collect()
}

/// (a) Producers admit two units while workers go to sleep and wake. If a
/// wake-up were lost, a task would sit in a queue with every worker parked,
/// `shutdown` would wait for it forever, and loom would report a deadlock.
///
/// `second_producer`: the second unit comes from a thread of its own, so
/// the two producers' wake-ups race each other; otherwise the test thread
/// admits both, back to back.
fn producers_and_parking_workers(bound: Bound, workers: usize, second_producer: bool) {
    model(bound, move || {
        let rt = Arc::new(runtime(workers, 2));
        let reports = Reports::default();
        let producer = second_producer.then(|| {
            let (rt, reports) = (rt.clone(), reports.clone());
            thread::spawn(move || rt.admit(|_| {}, reports.on_done(1)).unwrap())
        });
        rt.admit(|_| {}, reports.on_done(0)).unwrap();
        match producer {
            Some(producer) => producer.join().unwrap(),
            None => rt.admit(|_| {}, reports.on_done(1)).unwrap(),
        }
        let rt = Arc::try_unwrap(rt).ok().expect("producer has exited");
        let stats = rt.shutdown();
        assert_eq!(reports.sorted(), ok(0..2));
        assert_eq!(stats.completed, 2);
    });
}

/// Two producers and two workers: four threads. Every lost wake-up of
/// `sleep.md` takes one preemption (a worker stopped between its last look
/// at the queues and its announcement, or its re-check, while a producer
/// pushes and finds nobody to wake), so bound 1 covers them here; bound 2
/// would cost about a hundred times more. The two three-thread models
/// below take the same races one and two preemptions deeper.
fn two_producers_two_workers() {
    producers_and_parking_workers(Bound::Preemptions(1), 2, true);
}

#[test]
fn a_no_lost_wakeup_when_producers_race_parking_workers() {
    two_producers_two_workers();
}

/// Negative test: must fail, with loom reporting a deadlock. (loom aborts
/// the process while unwinding from its own report, so `loom-tests/run`
/// checks the exit status and the message rather than `should_panic`.)
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_skip_recheck_loses_a_wakeup() {
    with_bug("skip-recheck");
    two_producers_two_workers();
}

/// One producer, the test thread, admits both units while both workers
/// search, announce, re-check and park: the three cases of `sleep.md`'s
/// argument, with a preemption to spare.
fn one_producer_two_workers() {
    producers_and_parking_workers(Bound::Preemptions(2), 2, false);
}

#[test]
fn a_no_lost_wakeup_when_one_producer_races_two_parking_workers() {
    one_producer_two_workers();
}

/// Negative test: the same bug, seen with one producer.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_skip_recheck_loses_a_wakeup_with_one_producer() {
    with_bug("skip-recheck");
    one_producer_two_workers();
}

/// Two producers race their wake-ups (both may see the one sleeper, only
/// one takes it off the list) while the lone worker, which may always
/// search, searches and parks.
fn two_producers_one_worker() {
    producers_and_parking_workers(Bound::Preemptions(3), 1, true);
}

#[test]
fn a_no_lost_wakeup_when_two_producers_race_one_parking_worker() {
    two_producers_one_worker();
}

/// Negative test: the same bug, seen with one worker.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_skip_recheck_loses_a_wakeup_with_one_worker() {
    with_bug("skip-recheck");
    two_producers_one_worker();
}

/// (b) Units admitted back to back through a window of W: never more than W
/// live, from a unit's first task to the end of its completion, and the
/// admitter never deadlocks.
fn window_holds(bound: Bound, window: usize, units: usize) {
    model(bound, move || {
        let rt = runtime(2, window);
        // `live` is a loom atomic: a real completion callback synchronizes
        // with somebody (it sends, acks, counts), and loom must be able to
        // switch threads there, between the slot's release and the report.
        let live = loom::sync::Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let max_live = Arc::new(AtomicUsize::new(0));
        for _ in 0..units {
            let (live_in, max_in, live_out) = (live.clone(), max_live.clone(), live.clone());
            rt.admit(
                move |_| {
                    let now = live_in.fetch_add(1, SeqCst) + 1;
                    max_in.fetch_max(now, SeqCst);
                },
                move |_| {
                    live_out.fetch_sub(1, SeqCst);
                },
            )
            .unwrap();
        }
        let stats = rt.shutdown();
        let max = max_live.load(SeqCst);
        assert!(
            max <= window,
            "{max} units live at once in a window of {window}"
        );
        assert!(stats.max_in_flight <= window);
        assert_eq!(stats.completed, units as u64);
    });
}

/// W = 1, two units: the second admission blocks until the first unit's
/// completion has returned. An early release, or a release that misses the
/// blocked admitter, takes one preemption (the releasing worker, or the
/// admitter between seeing the window full and waiting); bound 2 leaves
/// one to spare.
fn window_of_one_two_units() {
    window_holds(Bound::Preemptions(2), 1, 2);
}

/// W = 1, three units: the admitter blocks, wakes and blocks again.
/// Bound 2 would cost over a hundred times more; the two-unit model checks
/// the same releases at bound 2.
fn window_of_one_three_units() {
    window_holds(Bound::Preemptions(1), 1, 3);
}

#[test]
fn b_window_of_one_is_never_exceeded_by_two_units() {
    window_of_one_two_units();
}

#[test]
fn b_window_of_one_is_never_exceeded_by_three_units() {
    window_of_one_three_units();
}

/// Negative test: must fail with "units live at once" (see above).
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_early_release_overfills_the_window() {
    with_bug("early-release");
    window_of_one_two_units();
}

/// The same bug, seen by the three-unit model at its bound.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_early_release_overfills_the_window_of_three_units() {
    with_bug("early-release");
    window_of_one_three_units();
}

/// W = 2, three units: both workers release while the admitter waits for
/// the third slot.
#[test]
fn b_window_of_two_is_never_exceeded() {
    window_holds(Bound::Preemptions(2), 2, 3);
}

/// W = 4, five units: the fifth admission blocks, and a release wakes the
/// admitter only once two slots are free (`wake_batch`, half the window).
/// A release that frees one slot must leave the admitter registered for a
/// later release to wake; one that missed it would leave `shutdown`
/// waiting, which loom reports as a deadlock. Bound 1: bound 2 explores
/// two hundred times as many executions.
#[test]
fn b_window_of_four_wakes_its_admitter_two_slots_at_a_time() {
    window_holds(Bound::Preemptions(1), 4, 5);
}

/// (b) with a window of 32, where each of the two workers releases its
/// completed units' slots two at a time (`Window::release_batch`). Three
/// units leave a worker owing a slot it cannot batch; it must pay it before
/// it searches or sleeps, or `shutdown` waits forever for the drain, which
/// loom reports as a deadlock.
fn batched_release_drains() {
    window_holds(Bound::Preemptions(2), 32, 3);
}

#[test]
fn b_window_of_32_with_batched_releases_drains() {
    batched_release_drains();
}

/// Negative test: must fail, with loom reporting a deadlock.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_idle_keeps_slots_never_drains() {
    with_bug("idle-keeps-slots");
    batched_release_drains();
}

/// (c) A unit fans out into two follow-on tasks, which the idle worker may
/// steal. Every task runs once, the unit completes once, and it frees
/// exactly one slot: the next unit gets in, and nothing is left in flight.
/// The unit's last task frees its memory; under loom every use of a unit
/// is checked to come before that free (`task.rs`).
///
/// Bound 2. A use of the unit after its free takes one preemption (the
/// spawning task stopped between its count and its last use while the
/// thief ends a follow-on); a steal at all takes one.
fn fanned_out_unit(stolen_in_some_execution: &'static AtomicBool) {
    model(Bound::Preemptions(2), || {
        let rt = runtime(2, 1);
        let reports = Reports::default();
        let ran = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let r = ran.clone();
        rt.admit(
            move |cx| {
                r[0].fetch_add(1, SeqCst);
                for follow_on in 1..3 {
                    let r = r.clone();
                    cx.spawn(move |_| {
                        r[follow_on].fetch_add(1, SeqCst);
                    });
                }
            },
            reports.on_done(0),
        )
        .unwrap();
        rt.admit(|_| {}, reports.on_done(1)).unwrap();
        let stats = rt.shutdown();
        assert!(
            ran.iter().all(|n| n.load(SeqCst) == 1),
            "a task ran twice or never"
        );
        assert_eq!(reports.sorted(), ok(0..2));
        assert_eq!((stats.completed, stats.in_flight), (2, 0));
        if stats.tasks_stolen() > 0 {
            stolen_in_some_execution.store(true, SeqCst);
        }
    });
}

#[test]
fn c_fanned_out_unit_completes_once_and_frees_one_slot() {
    static STOLEN_IN_SOME_EXECUTION: AtomicBool = AtomicBool::new(false);
    fanned_out_unit(&STOLEN_IN_SOME_EXECUTION);
    assert!(
        STOLEN_IN_SOME_EXECUTION.load(SeqCst),
        "no explored execution stole a follow-on"
    );
}

/// Negative test: must fail. Follow-ons pushed before they are counted let
/// the thief end one, see the count reach zero and free the unit while the
/// task that spawned them still uses it; loom reports that use as a
/// causality violation (a read not ordered against the free's write).
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_count_after_push_frees_a_unit_in_use() {
    with_bug("count-after-push");
    static STOLEN_IN_SOME_EXECUTION: AtomicBool = AtomicBool::new(false);
    fanned_out_unit(&STOLEN_IN_SOME_EXECUTION);
}

/// (d) Close while units are in flight and another thread is admitting:
/// every unit that got in completes, the late admitter is told `Closed`,
/// and `shutdown` returns, so every worker thread has exited.
fn close_and_drain(bound: Bound, workers: usize) {
    model(bound, move || {
        let rt = Arc::new(runtime(workers, 1));
        let reports = Reports::default();
        rt.admit(|cx| cx.spawn(|_| {}), reports.on_done(0)).unwrap();
        let late = {
            let (rt, reports) = (rt.clone(), reports.clone());
            thread::spawn(move || rt.admit(|_| {}, reports.on_done(1)))
        };
        rt.close();
        let late = late.join().unwrap();
        let rt = Arc::try_unwrap(rt).ok().expect("admitter has exited");
        let stats = rt.shutdown();
        let admitted = match late {
            Ok(()) => 2,
            Err(AdmitError::Closed) => 1,
            Err(other) => panic!("unexpected admission error {other:?}"),
        };
        assert_eq!(reports.sorted(), ok(0..admitted));
        assert_eq!(
            (stats.admitted, stats.completed, stats.in_flight),
            (admitted as u64, admitted as u64, 0)
        );
    });
}

/// Two workers, so the follow-on may be stolen: four threads. The close
/// racing the admitter's CAS, and the last release racing the drain, each
/// take one preemption; bound 2 would cost about a hundred times more.
#[test]
fn d_close_and_drain_with_work_in_flight() {
    close_and_drain(Bound::Preemptions(1), 2);
}

/// The same races on one worker, three preemptions deep.
#[test]
fn d_close_and_drain_with_work_in_flight_on_one_worker() {
    close_and_drain(Bound::Preemptions(3), 1);
}

/// (e) A follow-on task panics: its unit reports the failure with the panic
/// message, its slot frees (the next unit gets through a window of one),
/// and the worker carries on. Bound 2.
#[test]
fn e_panicking_task_reports_failure_and_frees_its_slot() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("intentional stage failure") {
            default_hook(info);
        }
    }));
    model(Bound::Preemptions(2), || {
        let rt = runtime(2, 1);
        let reports = Reports::default();
        rt.admit(
            |cx| cx.spawn(|_| panic!("intentional stage failure")),
            reports.on_done(0),
        )
        .unwrap();
        rt.admit(|_| {}, reports.on_done(1)).unwrap();
        let stats = rt.shutdown();
        let reports = reports.sorted();
        assert_eq!(reports.len(), 2);
        let failure = reports[0].1.clone().unwrap_err();
        assert_eq!(failure.message, "intentional stage failure");
        assert_eq!(reports[1], (1, Ok(())));
        assert_eq!((stats.completed, stats.failed, stats.in_flight), (1, 1, 0));
    });
}

/// (f) A task drops the last reference to its own runtime while another
/// unit is in flight (or the test thread's drop is the last: both orders
/// are explored). The drop must not wait for itself: it detaches, both
/// units still report, and every worker exits. A worker left parked
/// forever is a thread that never terminates, which loom reports as a
/// deadlock. Bound 2 (3 would cost about eighty times more).
fn drop_on_own_worker() {
    model(Bound::Preemptions(2), || {
        let rt = Arc::new(runtime(2, 2));
        let (tx, rx) = loom::sync::mpsc::channel();
        let last = rt.clone();
        let first = tx.clone();
        rt.admit(
            move |_| drop(last),
            move |outcome| first.send((0, outcome)).unwrap(),
        )
        .unwrap();
        rt.admit(|_| {}, move |outcome| tx.send((1, outcome)).unwrap())
            .unwrap();
        drop(rt);
        let mut reports = vec![rx.recv().unwrap(), rx.recv().unwrap()];
        reports.sort_by_key(|(unit, _)| *unit);
        assert_eq!(reports, ok(0..2));
    });
}

#[test]
fn f_last_drop_on_its_own_worker_detaches_and_every_worker_exits() {
    drop_on_own_worker();
}

/// Negative test: must fail, with loom reporting a deadlock (the workers of
/// the detached runtime never exit).
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_detach_never_stops_leaves_workers_parked() {
    with_bug("detach-never-stops");
    drop_on_own_worker();
}

/// (g) The parker never loses its token: an `unpark` that comes before,
/// during or after a `park` (including between the parker's decision to
/// block and its wait on the condvar) ends that park. A lost token leaves
/// the parking thread blocked forever: a deadlock. Two threads: loom
/// explores every interleaving, without a bound.
fn unpark_races_park() {
    model(Bound::Unbounded, || {
        let parker = Arc::new(Parker::new());
        let unparker = {
            let parker = parker.clone();
            thread::spawn(move || parker.unpark())
        };
        parker.park();
        unparker.join().unwrap();
    });
}

#[test]
fn g_unpark_racing_park_is_never_lost() {
    unpark_races_park();
}

/// Negative test: must fail, with loom reporting a deadlock (the notify
/// lands between the parker's PARKED and its wait).
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_unpark_skips_lock_loses_a_wakeup() {
    with_bug("unpark-skips-lock");
    unpark_races_park();
}

/// (h) A unit's task holds a follow-on and hands it to another thread,
/// which starts it (`started`) or drops it unstarted. The held task runs
/// once, or an empty one in its place; the unit completes once, after it;
/// its one slot frees, so the next unit gets through a window of one; and
/// every use of the unit comes before its last task frees it (`task.rs`).
///
/// Bound 2. The race the model is there for, the holding task's end
/// against the start and end of the held one, takes one preemption.
fn held_follow_on(started: bool) {
    model(Bound::Preemptions(2), move || {
        let rt = runtime(1, 1);
        let reports = Reports::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let ran_before_completion = Arc::new(AtomicUsize::new(usize::MAX));
        let (tx, rx) = loom::sync::mpsc::channel::<Held>();
        let starter = {
            let ran = ran.clone();
            thread::spawn(move || {
                let held = rx.recv().unwrap();
                if started {
                    held.start(move |_| {
                        ran.fetch_add(1, SeqCst);
                    });
                } else {
                    drop(held);
                }
            })
        };
        let on_done = {
            let (ran, seen, report) = (
                ran.clone(),
                ran_before_completion.clone(),
                reports.on_done(0),
            );
            move |outcome| {
                seen.store(ran.load(SeqCst), SeqCst);
                report(outcome)
            }
        };
        rt.admit(move |cx| tx.send(cx.hold()).unwrap(), on_done)
            .unwrap();
        rt.admit(|_| {}, reports.on_done(1)).unwrap();
        starter.join().unwrap();
        let stats = rt.shutdown();
        let expected = usize::from(started);
        assert_eq!(
            ran.load(SeqCst),
            expected,
            "the held task ran twice or never"
        );
        assert_eq!(
            ran_before_completion.load(SeqCst),
            expected,
            "the unit completed before its held task ran"
        );
        assert_eq!(reports.sorted(), ok(0..2));
        assert_eq!((stats.completed, stats.in_flight), (2, 0));
    });
}

#[test]
fn h_held_follow_on_started_elsewhere_completes_its_unit_once() {
    held_follow_on(true);
}

#[test]
fn h_held_follow_on_dropped_unstarted_still_completes_its_unit() {
    held_follow_on(false);
}

/// (h) The same, started by a task of another unit on the worker: the
/// held task goes onto that worker's own deque once the starting task
/// returns, and runs from there. One worker, so the holding unit's task
/// runs first (the shared queue is FIFO). Two threads, so bound 3 is
/// cheap.
#[test]
fn h_held_follow_on_started_by_another_units_task_completes_its_unit_once() {
    model(Bound::Preemptions(3), || {
        let rt = runtime(1, 2);
        let reports = Reports::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let slot: Arc<loom::sync::Mutex<Option<Held>>> = Arc::default();
        let on_done = {
            let (ran, report) = (ran.clone(), reports.on_done(0));
            move |outcome| {
                assert_eq!(
                    ran.load(SeqCst),
                    1,
                    "the unit completed before its held task ran"
                );
                report(outcome)
            }
        };
        let held = slot.clone();
        rt.admit(move |cx| *held.lock().unwrap() = Some(cx.hold()), on_done)
            .unwrap();
        let (held, r) = (slot.clone(), ran.clone());
        rt.admit(
            move |_| {
                let held = held.lock().unwrap().take();
                held.expect("the holding unit ran first").start(move |_| {
                    r.fetch_add(1, SeqCst);
                });
            },
            reports.on_done(1),
        )
        .unwrap();
        let stats = rt.shutdown();
        assert_eq!(ran.load(SeqCst), 1, "the held task ran twice or never");
        assert_eq!(reports.sorted(), ok(0..2));
        assert_eq!((stats.completed, stats.in_flight), (2, 0));
    });
}

/// Negative test: must fail. A hold that is not counted lets the unit
/// complete and free itself when the holding task ends; the held task then
/// uses the freed unit, which `task.rs` checks under loom.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_hold_uncounted_frees_a_unit_still_held() {
    with_bug("hold-uncounted");
    held_follow_on(true);
}

/// (i) A window grown by hand lets its blocked admitter in at once. W = 1,
/// and the one unit in flight is held (`cx.hold()`) until the second unit
/// has been admitted: no release can wake the admitter, only the grow
/// (`Runtime::set_window`, `window.md`, "Resizing"). The test thread
/// grows the window once the admitter has registered as blocked, which it
/// does under the window's lock and before it sleeps: loom explores the
/// grow against every point of that. (W is a `std` atomic, which loom does
/// not interleave around, so without the wait loom would run the grow
/// before the admitter ever looks.) A grow that missed the admitter would
/// leave it asleep, and the join waiting for it, which loom reports as a
/// deadlock.
fn grown_window_lets_its_admitter_in() {
    model(Bound::Preemptions(2), || {
        let rt = Arc::new(runtime(1, 1));
        let reports = Reports::default();
        let (tx, rx) = loom::sync::mpsc::channel::<Held>();
        rt.admit(move |cx| tx.send(cx.hold()).unwrap(), reports.on_done(0))
            .unwrap();
        let admitter = {
            let (rt, on_done) = (rt.clone(), reports.on_done(1));
            thread::spawn(move || rt.admit(|_| {}, on_done).unwrap())
        };
        while rt.blocked_admitters() == 0 {
            thread::yield_now();
        }
        rt.set_window(2).unwrap();
        admitter.join().unwrap();
        drop(rx.recv().unwrap());
        let rt = Arc::try_unwrap(rt).unwrap_or_else(|_| panic!("the admitter kept the runtime"));
        let stats = rt.shutdown();
        assert_eq!(reports.sorted(), ok(0..2));
        assert_eq!((stats.completed, stats.window), (2, 2));
    });
}

#[test]
fn i_a_grown_window_wakes_its_blocked_admitter() {
    grown_window_lets_its_admitter_in();
}

/// Negative test: must fail, with loom reporting a deadlock. A grow that
/// does not notify leaves the admitter asleep on a window with room.
#[test]
#[ignore = "a negative test: loom-tests/run runs it with its bug"]
fn broken_grow_skips_notify_leaves_its_admitter_asleep() {
    with_bug("grow-skips-notify");
    grown_window_lets_its_admitter_in();
}
