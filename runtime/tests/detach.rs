//! A runtime dropped where it must not wait (on one of its own workers, or
//! while its owner unwinds from a panic) detaches: the units in flight still
//! complete, and the workers exit by themselves once the window drains.
//!
//! A worker thread's exit is observed through a thread-local whose
//! destructor runs when that thread ends. Every runtime here has one worker,
//! so the first task registers it on the only worker thread.

use fila_runtime::{Outcome, Runtime, Workers};
use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(10);

fn one_worker(window: usize) -> Runtime {
    Runtime::builder()
        .workers(Workers::Count(NonZeroUsize::new(1).unwrap()))
        .pin(false)
        .window(window)
        .build()
        .expect("runtime starts")
}

/// Sends once, when the thread that holds it exits.
struct ExitSignal(mpsc::Sender<()>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<ExitSignal>> = const { RefCell::new(None) };
}

/// Registers an exit signal on the calling thread; the receiver hears from
/// it when the thread ends.
fn signal_exit_of_this_thread(tx: mpsc::Sender<()>) {
    ON_EXIT.with(|e| *e.borrow_mut() = Some(ExitSignal(tx)));
}

fn report(tx: &mpsc::Sender<(u32, Outcome)>, unit: u32) -> impl FnOnce(Outcome) + Send {
    let tx = tx.clone();
    move |outcome| tx.send((unit, outcome)).unwrap()
}

/// Waits for `n` unit reports and returns them sorted by unit.
fn reports(rx: &mpsc::Receiver<(u32, Outcome)>, n: usize) -> Vec<(u32, Outcome)> {
    let mut all: Vec<_> = (0..n)
        .map(|_| {
            rx.recv_timeout(PATIENCE)
                .expect("every unit in flight completes after the runtime is dropped")
        })
        .collect();
    all.sort_by_key(|(unit, _)| *unit);
    all
}

#[test]
fn last_drop_on_its_own_worker_completes_in_flight_units_and_stops_the_worker() {
    let rt = Arc::new(one_worker(4));
    let (exit_tx, exited) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let (follow_tx, followed) = mpsc::channel();
    let last = rt.clone();
    rt.admit(
        move |cx| {
            signal_exit_of_this_thread(exit_tx);
            go.recv().unwrap();
            assert_eq!(Arc::strong_count(&last), 1, "not the last reference");
            // This drop would wait for this very task if it shut down as
            // usual, and the test would time out below.
            drop(last);
            cx.spawn(move |_| follow_tx.send(()).unwrap());
        },
        report(&done_tx, 0),
    )
    .unwrap();
    rt.admit(|_| {}, report(&done_tx, 1)).unwrap();
    drop(rt);
    go_tx.send(()).unwrap();

    assert_eq!(reports(&done, 2), vec![(0, Ok(())), (1, Ok(()))]);
    followed
        .recv_timeout(PATIENCE)
        .expect("a follow-on spawned after the drop still runs");
    exited
        .recv_timeout(PATIENCE)
        .expect("the worker exits once the window drains");
}

#[test]
fn shutdown_on_its_own_worker_fails_that_task_clearly_and_still_drains() {
    let rt = Arc::new(one_worker(4));
    let (exit_tx, exited) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let last = rt.clone();
    rt.admit(
        move |_| {
            signal_exit_of_this_thread(exit_tx);
            go.recv().unwrap();
            let owned = Arc::try_unwrap(last).ok().expect("the last reference");
            owned.shutdown();
        },
        report(&done_tx, 0),
    )
    .unwrap();
    rt.admit(|_| {}, report(&done_tx, 1)).unwrap();
    drop(rt);
    go_tx.send(()).unwrap();

    let all = reports(&done, 2);
    let failure = all[0].1.clone().expect_err("shutdown on a worker panics");
    assert!(
        failure
            .message
            .contains("shutdown called from one of its own tasks"),
        "{failure}"
    );
    assert_eq!(all[1], (1, Ok(())));
    exited
        .recv_timeout(PATIENCE)
        .expect("the worker exits once the window drains");
}

#[test]
fn owner_panicking_with_units_in_flight_lets_them_finish_and_the_worker_exit() {
    let (exit_tx, exited) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let owner = std::thread::spawn(move || {
        let rt = one_worker(4);
        rt.admit(
            move |_| {
                signal_exit_of_this_thread(exit_tx);
                go.recv().unwrap();
            },
            report(&done_tx, 0),
        )
        .unwrap();
        panic!("the owner fails while a unit is in flight");
    });
    assert!(owner.join().is_err());
    // The owner is gone and did not wait; the unit is still blocked.
    go_tx.send(()).unwrap();
    assert_eq!(reports(&done, 1), vec![(0, Ok(()))]);
    exited
        .recv_timeout(PATIENCE)
        .expect("the worker exits once the window drains");
}
