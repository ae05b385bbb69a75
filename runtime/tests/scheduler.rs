//! Stress tests of the real scheduler (the crossbeam deques, not the loom
//! substitute): window, exactly-once, progress, panics, shutdown.

use fila_runtime::{AdmitError, Runtime, TaskCx, Workers};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn runtime(workers: usize, window: usize) -> Runtime {
    Runtime::builder()
        .workers(Workers::Count(NonZeroUsize::new(workers).unwrap()))
        .pin(false)
        .window(window)
        .build()
        .expect("runtime starts")
}

/// A tiny deterministic generator so every unit's task tree can be rebuilt
/// off the runtime to know how many tasks it must run.
fn next(state: u64) -> u64 {
    let mut x = state ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn fanout(state: u64, depth: u32) -> u64 {
    if depth == 0 {
        0
    } else {
        next(state) % 4
    }
}

/// Tasks in the tree rooted at `state`.
fn tree_size(state: u64, depth: u32) -> u64 {
    let mut total = 1;
    let mut s = state;
    for _ in 0..fanout(state, depth) {
        s = next(s);
        total += tree_size(s, depth - 1);
    }
    total
}

/// Runs the tree rooted at `state`, bumping `ran` once per task.
fn tree_task(
    state: u64,
    depth: u32,
    ran: Arc<AtomicU64>,
    spin: u32,
) -> impl FnOnce(&mut TaskCx<'_>) + Send {
    move |cx| {
        ran.fetch_add(1, SeqCst);
        for i in 0..spin {
            std::hint::black_box(i);
        }
        let mut s = state;
        for _ in 0..fanout(state, depth) {
            s = next(s);
            cx.spawn(tree_task(s, depth - 1, ran.clone(), spin));
        }
    }
}

#[test]
fn window_never_exceeds_cap_under_stealing() {
    let mut stolen = 0;
    for window in [1, 2, 3, 4, 8, 16, 32, 64] {
        let rt = runtime(4, window);
        let live = Arc::new(AtomicI64::new(0));
        let max_live = Arc::new(AtomicI64::new(0));
        std::thread::scope(|s| {
            for admitter in 0..3u64 {
                let (rt, live, max_live) = (&rt, live.clone(), max_live.clone());
                s.spawn(move || {
                    for i in 0..400u64 {
                        let (live_in, max_in, live_done) =
                            (live.clone(), max_live.clone(), live.clone());
                        let ran = Arc::new(AtomicU64::new(0));
                        let root = tree_task(admitter * 1_000_003 + i, 3, ran, 2_000);
                        rt.admit(
                            move |cx| {
                                // Counted from the unit's first task to its
                                // completion: a subset of its window time.
                                let now = live_in.fetch_add(1, SeqCst) + 1;
                                max_in.fetch_max(now, SeqCst);
                                root(cx);
                            },
                            move |_| {
                                live_done.fetch_sub(1, SeqCst);
                            },
                        )
                        .unwrap();
                    }
                });
            }
        });
        let stats = rt.shutdown();
        let max = max_live.load(SeqCst);
        assert!(max <= window as i64, "W={window}: {max} units live at once");
        assert!(stats.max_in_flight <= window, "W={window}: {stats:?}");
        assert_eq!(
            stats.max_in_flight, window,
            "W={window} was never filled: {stats:?}"
        );
        assert_eq!(stats.completed, 1200);
        assert_eq!(live.load(SeqCst), 0);
        stolen += stats.tasks_stolen();
    }
    assert!(
        stolen > 0,
        "no task was ever stolen, so stealing was not exercised"
    );
}

#[test]
fn million_tiny_tasks_with_random_fanout_each_unit_completes_exactly_once() {
    const UNITS: u64 = 100_000;
    const DEPTH: u32 = 4;
    let expected: Vec<u64> = (0..UNITS).map(|u| tree_size(u, DEPTH)).collect();
    let total: u64 = expected.iter().sum();
    assert!(total > 1_000_000, "tree too small: {total} tasks");

    let rt = runtime(4, 64);
    let ran: Vec<Arc<AtomicU64>> = (0..UNITS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let done: Arc<Vec<AtomicU32>> = Arc::new((0..UNITS).map(|_| AtomicU32::new(0)).collect());
    std::thread::scope(|s| {
        for part in 0..2 {
            let (rt, ran, done) = (&rt, &ran, &done);
            s.spawn(move || {
                for u in (part..UNITS).step_by(2) {
                    let done = done.clone();
                    rt.admit(
                        tree_task(u, DEPTH, ran[u as usize].clone(), 0),
                        move |outcome| {
                            assert!(outcome.is_ok());
                            done[u as usize].fetch_add(1, SeqCst);
                        },
                    )
                    .unwrap();
                }
            });
        }
    });
    let stats = rt.shutdown();
    for u in 0..UNITS as usize {
        assert_eq!(
            done[u].load(SeqCst),
            1,
            "unit {u} completed {} times",
            done[u].load(SeqCst)
        );
        assert_eq!(
            ran[u].load(SeqCst),
            expected[u],
            "unit {u} ran a wrong number of tasks"
        );
    }
    assert_eq!(stats.tasks_run(), total);
    assert_eq!(stats.completed, UNITS);
    assert_eq!(stats.admitted, UNITS);
    assert_eq!(stats.failed, 0);
}

/// Each unit holds a follow-on and leaves it for a later unit's task to
/// start (or to drop unstarted, every third), as keyed stages do with a
/// record that waits for another. Each held task runs once, on whichever
/// worker takes it, before its unit completes; each unit completes once;
/// the window holds meanwhile.
#[test]
fn held_follow_ons_started_by_other_units_run_once_before_their_unit_completes() {
    const UNITS: usize = 100_000;
    const WINDOW: usize = 8;
    let rt = runtime(4, WINDOW);
    let ran: Arc<Vec<AtomicU32>> = Arc::new((0..UNITS).map(|_| AtomicU32::new(0)).collect());
    let done: Arc<Vec<AtomicU32>> = Arc::new((0..UNITS).map(|_| AtomicU32::new(0)).collect());
    let stash: Arc<Mutex<Vec<(usize, fila_runtime::Held)>>> = Arc::default();
    let first_tasks_run = Arc::new(AtomicU64::new(0));
    let start = |ran: &Arc<Vec<AtomicU32>>, (u, held): (usize, fila_runtime::Held)| {
        if u % 3 == 2 {
            drop(held);
        } else {
            let ran = ran.clone();
            held.start(move |_| {
                ran[u].fetch_add(1, SeqCst);
            });
        }
    };
    for u in 0..UNITS {
        let (ran, done, stash) = (ran.clone(), done.clone(), stash.clone());
        let (ran_here, first_tasks_run) = (ran.clone(), first_tasks_run.clone());
        rt.admit(
            move |cx| {
                let ran = ran_here;
                let held = cx.hold();
                // Start the held task of an earlier unit, never this one's:
                // this unit then stays in flight after its own task ends.
                let earlier = {
                    let mut stash = stash.lock().unwrap();
                    stash.push((u, held));
                    (stash.len() > 1).then(|| stash.remove(0))
                };
                if let Some(earlier) = earlier {
                    start(&ran, earlier);
                }
                first_tasks_run.fetch_add(1, SeqCst);
            },
            {
                move |outcome| {
                    assert!(outcome.is_ok());
                    let want = u32::from(u % 3 != 2);
                    assert_eq!(
                        ran[u].load(SeqCst),
                        want,
                        "unit {u} completed before its held task ran"
                    );
                    done[u].fetch_add(1, SeqCst);
                }
            },
        )
        .unwrap();
    }
    // One held task is left in the stash once every first task has run
    // (the last to run left it): its unit is in flight until it is
    // started, and shutdown would wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first_tasks_run.load(SeqCst) < UNITS as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {UNITS} first tasks ran in 60 s",
            first_tasks_run.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let left: Vec<_> = std::mem::take(&mut *stash.lock().unwrap());
    assert_eq!(left.len(), 1);
    left.into_iter().for_each(|held| start(&ran, held));
    let stats = rt.shutdown();
    for u in 0..UNITS {
        assert_eq!(
            done[u].load(SeqCst),
            1,
            "unit {u} completed {} times",
            done[u].load(SeqCst)
        );
    }
    assert_eq!((stats.completed, stats.failed), (UNITS as u64, 0));
    assert!(
        stats.max_in_flight <= WINDOW,
        "{} in flight",
        stats.max_in_flight
    );
}

fn progress_with(workers: usize) {
    let rt = runtime(workers, 1);
    let (tx, rx) = mpsc::channel();
    for i in 0..1_000u32 {
        let tx = tx.clone();
        rt.admit(
            move |cx| cx.spawn(move |cx| cx.spawn(move |_| std::hint::black_box(()))),
            move |outcome| tx.send((i, outcome)).unwrap(),
        )
        .unwrap();
    }
    let stats = rt.shutdown();
    let done: Vec<u32> = rx.try_iter().map(|(i, o)| o.map(|_| i).unwrap()).collect();
    // With one slot, units run strictly one after another, in order.
    assert_eq!(done, (0..1_000).collect::<Vec<_>>());
    assert_eq!(stats.max_in_flight, 1);
    assert_eq!(stats.tasks_run(), 3_000);
}

#[test]
fn window_of_one_makes_progress() {
    progress_with(2);
}

#[test]
fn window_of_one_with_one_worker_makes_progress() {
    progress_with(1);
}

#[test]
fn panic_in_a_task_fails_only_its_unit_and_frees_its_slot() {
    let rt = runtime(2, 2);
    let followed = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    for i in 0..50u32 {
        let (tx, followed) = (tx.clone(), followed.clone());
        rt.admit(
            move |cx| {
                let followed = followed.clone();
                cx.spawn(move |_| {
                    followed.fetch_add(1, SeqCst);
                });
                if i % 10 == 3 {
                    panic!("bad record {i}");
                }
            },
            move |outcome| tx.send((i, outcome)).unwrap(),
        )
        .unwrap();
    }
    let stats = rt.shutdown();
    let mut outcomes: Vec<_> = rx.try_iter().collect();
    outcomes.sort_by_key(|(i, _)| *i);
    assert_eq!(outcomes.len(), 50);
    for (i, outcome) in outcomes {
        if i % 10 == 3 {
            assert_eq!(outcome.unwrap_err().message, format!("bad record {i}"));
        } else {
            assert!(outcome.is_ok());
        }
    }
    // The follow-ons of a panicking task are discarded, not run.
    assert_eq!(followed.load(SeqCst), 45);
    assert_eq!((stats.completed, stats.failed, stats.in_flight), (45, 5, 0));
}

#[test]
fn panic_in_a_completion_callback_is_contained() {
    let rt = runtime(1, 1);
    rt.admit(|_| {}, |_| panic!("completion bug")).unwrap();
    let (tx, rx) = mpsc::channel();
    rt.admit(|_| {}, move |o| tx.send(o).unwrap()).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
    assert_eq!(rt.shutdown().completed, 2);
}

#[test]
fn shutdown_with_work_in_flight_loses_nothing() {
    let rt = runtime(2, 16);
    let done = Arc::new(Mutex::new(Vec::new()));
    for i in 0..200u32 {
        let done = done.clone();
        rt.admit(
            move |cx| {
                cx.spawn(move |_| std::thread::sleep(Duration::from_micros(200)));
            },
            move |o| done.lock().unwrap().push((i, o.is_ok())),
        )
        .unwrap();
    }
    // Units are still running here; shutdown must drain them, not drop them.
    let stats = rt.shutdown();
    let mut done = done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..200).map(|i| (i, true)).collect::<Vec<_>>());
    assert_eq!((stats.completed, stats.in_flight), (200, 0));
}

#[test]
fn close_refuses_new_units_and_releases_blocked_admitters() {
    let rt = Arc::new(runtime(1, 1));
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let g = gate.clone();
    rt.admit(move |_| g.lock().unwrap().recv().unwrap(), |_| {})
        .unwrap();
    // Not a scoped thread: if `close` failed to release it, the test must
    // fail on the timeout below rather than hang joining it.
    let (answer, answered) = mpsc::channel();
    let admitter = {
        let rt = rt.clone();
        std::thread::spawn(move || answer.send(rt.admit(|_| {}, |_| {})).unwrap())
    };
    // Close only once the admitter is blocked on the full window, so that
    // it is the wake-up in `close` that must release it.
    while rt.blocked_admitters() == 0 {
        std::thread::yield_now();
    }
    rt.close();
    assert_eq!(
        answered.recv_timeout(Duration::from_secs(10)),
        Ok(Err(AdmitError::Closed)),
        "the blocked admitter was not released by close"
    );
    admitter.join().unwrap();
    assert_eq!(rt.blocked_admitters(), 0);
    assert!(matches!(rt.try_reserve(), Err(AdmitError::Closed)));
    release.send(()).unwrap();
    let rt = Arc::try_unwrap(rt).ok().expect("the admitter has exited");
    let stats = rt.shutdown();
    assert_eq!((stats.admitted, stats.completed), (1, 1));
}

#[test]
fn try_reserve_reports_full_without_blocking() {
    let rt = runtime(1, 1);
    let (release, gate) = mpsc::channel::<()>();
    let slot = rt.try_reserve().unwrap();
    slot.submit(move |_| gate.recv().unwrap(), |_| {});
    assert!(matches!(rt.try_reserve(), Err(AdmitError::Full)));
    release.send(()).unwrap();
    rt.shutdown();
}

#[test]
fn an_unused_slot_frees_its_capacity_when_dropped() {
    let rt = runtime(1, 1);
    drop(rt.reserve().unwrap());
    assert_eq!(rt.in_flight(), 0);
    rt.admit(|_| {}, |_| {}).unwrap();
    assert_eq!(rt.shutdown().completed, 1);
}

#[test]
fn a_worker_cannot_block_on_its_own_window() {
    let rt = Arc::new(runtime(1, 1));
    let (tx, rx) = mpsc::channel();
    let inner = rt.clone();
    rt.admit(
        move |_| {
            let refused = inner.admit(|_| {}, |_| {});
            // Dropped before the answer is sent, so the test thread holds the
            // last reference once it has the answer, and the runtime shuts
            // down here, joined, rather than on its own worker.
            drop(inner);
            tx.send(refused).unwrap();
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(AdmitError::OnWorker)
    );
    let rt = Arc::try_unwrap(rt)
        .ok()
        .expect("the task dropped its clone");
    assert_eq!(rt.shutdown().completed, 1);
}

#[test]
fn every_worker_reports_busy_time_covering_the_tasks_it_ran() {
    const UNITS: usize = 8;
    const TASK: Duration = Duration::from_millis(20);
    let workers = 2;
    // Before the runtime: its workers count busy time from their start.
    let started = std::time::Instant::now();
    let rt = runtime(workers, UNITS);
    assert!(
        rt.stats()
            .workers
            .iter()
            .all(|w| w.busy <= started.elapsed()),
        "{:?}",
        rt.stats()
    );
    // Each task blocks its worker until both workers have started a task,
    // then runs for TASK: every worker must run some.
    let barrier = Arc::new(std::sync::Barrier::new(workers));
    for i in 0..UNITS {
        let barrier = barrier.clone();
        rt.admit(
            move |_| {
                if i < workers {
                    barrier.wait();
                }
                let start = std::time::Instant::now();
                while start.elapsed() < TASK {
                    std::hint::spin_loop();
                }
            },
            |_| {},
        )
        .unwrap();
    }
    let stats = rt.shutdown();
    let lifetime = started.elapsed();
    assert_eq!(stats.workers.len(), workers);
    for (i, w) in stats.workers.iter().enumerate() {
        assert!(w.tasks_run > 0, "worker {i} ran nothing: {stats:?}");
        assert!(w.busy >= TASK, "worker {i} busy {:?}: {stats:?}", w.busy);
        assert!(
            w.busy <= lifetime,
            "worker {i} busy {:?}: {stats:?}",
            w.busy
        );
    }
    assert!(
        stats.busy() >= TASK * UNITS as u32,
        "{:?} busy for {UNITS} tasks of {TASK:?}",
        stats.busy()
    );
}
