//! The window sweep: a burst of the reference message (stages scaled down
//! so criterion can repeat it) through fila at W in {1, P, 2P, 4P, 16P,
//! 64P, unbounded}, with the Tokio event-loop design and rayon measured in
//! the same run as baselines.
//!
//! Two groups: `burst_makespan` (time to drain the burst; throughput in
//! messages) and `burst_mean_latency` (the mean completion time of a
//! message in the burst, reported by criterion as the time per iteration).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fila_benches::{cpus, systems, BurstTimes, Message};
use fila_runtime::{Runtime, Workers};
use std::num::NonZeroUsize;
use std::time::Duration;

const MESSAGE: Message = [5, 10, 20, 10, 5];
const N: usize = 400;

fn sweep(c: &mut Criterion, group_name: &str, figure: fn(&BurstTimes) -> Duration) {
    let p = fila_runtime::allowed_cpus().len().max(1);
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .throughput(Throughput::Elements(N as u64));
    let windows = [
        ("1".to_string(), 1),
        ("P".into(), p),
        ("2P".into(), 2 * p),
        ("4P".into(), 4 * p),
        ("16P".into(), 16 * p),
        ("64P".into(), 64 * p),
        ("unbounded".into(), N),
    ];
    for (label, w) in windows {
        let rt = Runtime::builder()
            .workers(Workers::Count(NonZeroUsize::new(p).unwrap()))
            .window(w)
            .build()
            .unwrap();
        group.bench_function(BenchmarkId::new("fila", label), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| figure(&systems::fila_on(&rt, MESSAGE, N)))
                    .sum()
            })
        });
    }
    group.bench_function(BenchmarkId::new("baseline", "tokio-event-loop"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| figure(&systems::tokio_event_loop(p, MESSAGE, N)))
                .sum()
        })
    });
    let pinned = cpus(p);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(p)
        .start_handler(move |i| fila_benches::pin(pinned[i]))
        .build()
        .unwrap();
    group.bench_function(BenchmarkId::new("baseline", "rayon"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| figure(&systems::rayon_on(&pool, MESSAGE, N)))
                .sum()
        })
    });
    group.finish();
}

fn makespan(c: &mut Criterion) {
    sweep(c, "burst_makespan", BurstTimes::makespan);
}

fn mean_latency(c: &mut Criterion) {
    sweep(c, "burst_mean_latency", BurstTimes::mean);
}

criterion_group!(benches, makespan, mean_latency);
criterion_main!(benches);
