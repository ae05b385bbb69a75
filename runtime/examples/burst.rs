//! A burst of 10,000 units of five follow-on tasks each, the reference
//! Fibonacci stages (10-20-30-20-10), with W = 4 × workers (one per
//! allowed CPU). Prints
//! throughput and mean latency next to the ideal of
//! `docs/design/measurement.md`,
//! with w calibrated in this same run.
//!
//!     cargo run --release -p fila-runtime --example burst [-- N]

use fila_runtime::ideal::{
    calibrate, calibration_messages_per_thread, Ideal, WARM_UP_MESSAGES_PER_THREAD,
};
use fila_runtime::{Runtime, TaskCx, Workers};
use std::sync::mpsc;
use std::time::Instant;

const STAGES: [u64; 5] = [10, 20, 30, 20, 10];

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn stage(k: usize) -> impl FnOnce(&mut TaskCx<'_>) + Send {
    move |cx| {
        std::hint::black_box(fib(std::hint::black_box(STAGES[k])));
        if k + 1 < STAGES.len() {
            cx.spawn(stage(k + 1));
        }
    }
}

fn one_message() {
    for n in STAGES {
        std::hint::black_box(fib(std::hint::black_box(n)));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |s| s.parse().expect("N must be a count"));
    let workers = fila_runtime::allowed_cpus().len().max(1);
    let rt = Runtime::builder()
        .workers(Workers::Logical)
        .window(4 * workers)
        .build()
        .expect("runtime starts");
    let (p, window) = (rt.workers(), rt.window());
    let per_thread = calibration_messages_per_thread(n, p);
    // The calibration threads run on the workers' CPUs.
    let cpus: Vec<Option<usize>> = rt.stats().workers.iter().map(|w| w.cpu).collect();

    calibrate(&cpus, WARM_UP_MESSAGES_PER_THREAD, |_| one_message());
    let before = calibrate(&cpus, per_thread, |_| one_message());
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for _ in 0..n {
        let tx = tx.clone();
        rt.admit(stage(0), move |outcome| {
            outcome.expect("stages do not panic");
            tx.send(Instant::now()).expect("main thread is listening");
        })
        .expect("runtime is open");
    }
    drop(tx);
    let done: Vec<Instant> = rx.iter().collect();
    let stats = rt.shutdown();
    let after = calibrate(&cpus, per_thread, |_| one_message());

    let ideal = Ideal::from_calibrations(p, before, after);
    let last = done.iter().max().expect("burst is not empty");
    let elapsed = last.duration_since(start).as_secs_f64();
    let throughput = n as f64 / elapsed;
    let mean = done
        .iter()
        .map(|t| t.duration_since(start).as_secs_f64())
        .sum::<f64>()
        / n as f64;
    let ideal_mean = ideal.mean_latency(n).as_secs_f64();

    println!(
        "burst of {n} units x {} tasks, {p} workers, window {window}",
        STAGES.len()
    );
    println!(
        "w = {:.3} ms (calibration spread {:.1}%{})",
        ideal.work_per_message.as_secs_f64() * 1e3,
        ideal.spread * 100.0,
        if ideal.is_noisy() { ", noisy run" } else { "" }
    );
    println!(
        "throughput   {:>9.1} msg/s   ideal {:>9.1}   efficiency    {:.3}",
        throughput,
        ideal.throughput(),
        throughput / ideal.throughput()
    );
    println!(
        "mean latency {:>9.1} ms      ideal {:>9.1}   latency ratio {:.3}",
        mean * 1e3,
        ideal_mean * 1e3,
        mean / ideal_mean
    );
    println!(
        "tasks run {}, stolen {}, parks {}, max in flight {}",
        stats.tasks_run(),
        stats.tasks_stolen(),
        stats.parks(),
        stats.max_in_flight
    );
}
