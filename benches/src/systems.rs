//! The systems compared: fila at a window, the thesis's Tokio event loop,
//! and rayon. Each runs a burst of identical messages on P threads.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use fila_runtime::{Runtime, TaskCx, Workers};

use crate::{cpus, pin, stage, BurstTimes, Finished, Message};

/// fila: each message is one unit of five follow-on tasks, admitted through
/// a window of `window`.
pub fn fila(p: usize, window: usize, message: Message, n: usize) -> BurstTimes {
    let rt = Runtime::builder()
        .workers(Workers::Count(NonZeroUsize::new(p).expect("p >= 1")))
        .window(window)
        .build()
        .expect("the runtime starts");
    fila_on(&rt, message, n)
}

/// A burst through an already running runtime (for repeated benches).
pub fn fila_on(rt: &Runtime, message: Message, n: usize) -> BurstTimes {
    /// Stage k adds its result to `sum` and hands it to stage k + 1; the
    /// last stage leaves the total in the message's cell for the completion.
    fn run_stage(
        message: Message,
        k: usize,
        sum: u64,
        cell: Arc<AtomicU64>,
    ) -> impl FnOnce(&mut TaskCx<'_>) + Send {
        move |cx| {
            let sum = sum.wrapping_add(stage(message[k]));
            if k + 1 < message.len() {
                cx.spawn(run_stage(message, k + 1, sum, cell));
            } else {
                // Relaxed: the unit's completion runs after this task has
                // finished, and the runtime orders the two.
                cell.store(sum, Ordering::Relaxed);
            }
        }
    }
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for index in 0..n {
        let tx = tx.clone();
        let cell = Arc::new(AtomicU64::new(0));
        let total = cell.clone();
        rt.admit(run_stage(message, 0, 0, cell), move |outcome| {
            outcome.expect("stages do not panic");
            let at = Instant::now();
            let checksum = total.load(Ordering::Relaxed);
            let _ = tx.send(Finished {
                index,
                checksum,
                at,
            });
        })
        .expect("the runtime is open");
    }
    drop(tx);
    BurstTimes::from_finished(start, rx.iter().collect(), n)
}

/// One stage request on the shared queue of the Tokio design.
struct StageRequest {
    n: u32,
    reply: tokio::sync::oneshot::Sender<u64>,
}

/// The design fila replaces (`docs/design/architecture.md#background`):
/// a Tokio event loop on one
/// thread, like the thesis's Actix arbiter, takes in every message of the
/// burst at once, one task per message. Each task sends each stage through
/// one shared queue to a pool of P operator threads and awaits the result,
/// so stage k+1 of a message waits behind the stage-k requests of every
/// other message.
pub fn tokio_event_loop(p: usize, message: Message, n: usize) -> BurstTimes {
    let (queue, requests) = crossbeam_channel::unbounded::<StageRequest>();
    let operators: Vec<_> = cpus(p)
        .into_iter()
        .map(|cpu| {
            let requests = requests.clone();
            std::thread::spawn(move || {
                pin(cpu);
                for StageRequest { n, reply } in requests {
                    let _ = reply.send(stage(n));
                }
            })
        })
        .collect();
    drop(requests);

    let event_loop = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("the Tokio runtime starts");
    let times = event_loop.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        for i in 0..n {
            let (queue, tx) = (queue.clone(), tx.clone());
            tokio::spawn(async move {
                let mut checksum = 0u64;
                for &stage_n in &message {
                    let (reply, result) = tokio::sync::oneshot::channel();
                    queue
                        .send(StageRequest { n: stage_n, reply })
                        .expect("operators are running");
                    checksum = checksum.wrapping_add(result.await.expect("the operator replies"));
                }
                let _ = tx.send(Finished {
                    index: i,
                    checksum,
                    at: Instant::now(),
                });
            });
        }
        drop(tx);
        let mut done = Vec::with_capacity(n);
        while let Some(d) = rx.recv().await {
            done.push(d);
        }
        BurstTimes::from_finished(start, done, n)
    });
    drop(queue);
    for op in operators {
        op.join().expect("operator threads do not panic");
    }
    times
}

/// What a Rust user would reach for: one `rayon::spawn` per message, each
/// running the five stages, on a pool of P pinned threads.
pub fn rayon(p: usize, message: Message, n: usize) -> BurstTimes {
    let cpus = Arc::new(cpus(p));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(p)
        .start_handler(move |i| pin(cpus[i]))
        .build()
        .expect("the rayon pool starts");
    rayon_on(&pool, message, n)
}

pub fn rayon_on(pool: &rayon::ThreadPool, message: Message, n: usize) -> BurstTimes {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for i in 0..n {
        let tx = tx.clone();
        pool.spawn(move || {
            let checksum = message
                .iter()
                .fold(0u64, |sum, &stage_n| sum.wrapping_add(stage(stage_n)));
            let _ = tx.send(Finished {
                index: i,
                checksum,
                at: Instant::now(),
            });
        });
    }
    drop(tx);
    BurstTimes::from_finished(start, rx.iter().collect(), n)
}
