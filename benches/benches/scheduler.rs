//! Scheduler micro-benchmark (criterion; `scheduler-table` prints the same
//! comparison as medians over interleaved rounds): 10,000 tiny tasks
//! submitted from outside the pool, through fila (each a unit, window 4096), rayon (`spawn`) and
//! Tokio's multi-thread runtime (`spawn`), all with P threads. Criterion
//! reports tasks per second. Two task bodies: empty, and about 1 µs of
//! work (naive fib(13)).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fila_runtime::{Runtime, Workers};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

const TASKS: usize = 10_000;

/// Counts completions and signals once, when the last task is done.
#[derive(Clone)]
struct Done(Arc<(AtomicUsize, mpsc::SyncSender<()>)>);

impl Done {
    fn new() -> (Done, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::sync_channel(1);
        (Done(Arc::new((AtomicUsize::new(0), tx))), rx)
    }

    fn one(&self) {
        if self.0 .0.fetch_add(1, Ordering::AcqRel) + 1 == TASKS {
            let _ = self.0 .1.send(());
        }
    }
}

fn body(work: u32) {
    if work > 0 {
        std::hint::black_box(fila_benches::fib(std::hint::black_box(work)));
    }
}

fn tiny_tasks(c: &mut Criterion) {
    let p = fila_runtime::allowed_cpus().len().max(1);
    let fila = Runtime::builder()
        .workers(Workers::Count(NonZeroUsize::new(p).unwrap()))
        .window(4096)
        .build()
        .unwrap();
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(p)
        .build()
        .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p)
        .build()
        .unwrap();

    for (label, work) in [("empty", 0u32), ("about-1us", 13)] {
        let mut group = c.benchmark_group(format!("tiny_tasks_{label}"));
        group.throughput(Throughput::Elements(TASKS as u64));
        group.bench_function(BenchmarkId::new("fila", p), |b| {
            b.iter(|| {
                let (done, all) = Done::new();
                for _ in 0..TASKS {
                    let done = done.clone();
                    fila.admit(move |_| body(work), move |_| done.one())
                        .unwrap();
                }
                all.recv().unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("rayon", p), |b| {
            b.iter(|| {
                let (done, all) = Done::new();
                for _ in 0..TASKS {
                    let done = done.clone();
                    rayon.spawn(move || {
                        body(work);
                        done.one();
                    });
                }
                all.recv().unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("tokio", p), |b| {
            b.iter(|| {
                let (done, all) = Done::new();
                for _ in 0..TASKS {
                    let done = done.clone();
                    tokio.spawn(async move {
                        body(work);
                        done.one();
                    });
                }
                all.recv().unwrap();
            })
        });
        group.finish();
    }
}

criterion_group!(benches, tiny_tasks);
criterion_main!(benches);
