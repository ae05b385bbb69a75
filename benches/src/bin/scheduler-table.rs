//! Per-task scheduling cost: fila, rayon and Tokio on many tiny tasks
//! submitted from outside the pool, with P threads each (pinned to the same
//! CPUs). Two bodies: empty, and about 1 µs of work (naive fib(13)). The
//! systems are interleaved over the rounds (rotating which goes first), and
//! each row is the median over the rounds.
//!
//!     cargo run --release -p fila-benches --bin scheduler-table -- [--tasks 100000] [--rounds 7] [--json]
//!
//! fila admits each task as a unit through a window of 4096 (as the
//! criterion bench `scheduler` does) and counts it done in its completion;
//! rayon (`ThreadPool::spawn`) and Tokio (multi-thread runtime, `spawn`)
//! count it done at the end of the task body.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use fila_benches::{cpus, median, pin};
use fila_runtime::{Runtime, Workers};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    about = "tasks per second of fila, rayon and Tokio on tiny tasks, medians over interleaved rounds"
)]
struct Args {
    /// Tasks per timed batch.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    tasks: u64,
    /// Timed rounds; every system runs once per round and body.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// Only these systems (for profiling one of them).
    #[arg(long, value_delimiter = ',', default_values_t = SYSTEMS.map(String::from))]
    systems: Vec<String>,
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    json: bool,
}

/// One line of the table: the median over the rounds.
#[derive(Debug, Clone, Serialize)]
struct Row {
    system: &'static str,
    body: &'static str,
    tasks_per_s: f64,
}

/// The task bodies, by name and naive-Fibonacci argument (0: empty).
const BODIES: [(&str, u32); 2] = [("empty", 0), ("about-1us", 13)];

/// The window fila admits through: large enough that the admitter rarely
/// waits, as in the criterion bench.
const FILA_WINDOW: usize = 4096;

fn body(work: u32) {
    if work > 0 {
        std::hint::black_box(fila_benches::fib(std::hint::black_box(work)));
    }
}

/// Counts finished tasks and signals once, when the last is done.
#[derive(Clone)]
struct Done(Arc<(AtomicUsize, usize, mpsc::SyncSender<()>)>);

impl Done {
    fn new(tasks: usize) -> (Done, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::sync_channel(1);
        (Done(Arc::new((AtomicUsize::new(0), tasks, tx))), rx)
    }

    fn one(&self) {
        let (count, tasks, tx) = &*self.0;
        // AcqRel: the last increment sees every other task's effects.
        if count.fetch_add(1, Ordering::AcqRel) + 1 == *tasks {
            let _ = tx.send(());
        }
    }
}

struct Systems {
    fila: Runtime,
    rayon: rayon::ThreadPool,
    tokio: tokio::runtime::Runtime,
}

impl Systems {
    fn start(p: usize) -> Systems {
        let pinned = Arc::new(cpus(p));
        let fila = Runtime::builder()
            .workers(Workers::Count(NonZeroUsize::new(p).expect("p >= 1")))
            .window(FILA_WINDOW)
            .build()
            .expect("the fila runtime starts");
        let rayon = {
            let pinned = pinned.clone();
            rayon::ThreadPoolBuilder::new()
                .num_threads(p)
                .start_handler(move |i| pin(pinned[i]))
                .build()
                .expect("the rayon pool starts")
        };
        let next = AtomicUsize::new(0);
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(p)
            .on_thread_start(move || {
                let i = next.fetch_add(1, Ordering::Relaxed);
                pin(pinned[i % pinned.len()]);
            })
            .build()
            .expect("the Tokio runtime starts");
        Systems { fila, rayon, tokio }
    }

    /// Submits `tasks` tasks of `work` to `system` and waits for all.
    fn run(&self, system: &str, work: u32, tasks: usize) -> Duration {
        let (done, all) = Done::new(tasks);
        let start = Instant::now();
        match system {
            "fila" => {
                for _ in 0..tasks {
                    let done = done.clone();
                    self.fila
                        .admit(move |_| body(work), move |_| done.one())
                        .expect("the runtime is open");
                }
            }
            "rayon" => {
                for _ in 0..tasks {
                    let done = done.clone();
                    self.rayon.spawn(move || {
                        body(work);
                        done.one();
                    });
                }
            }
            "tokio" => {
                for _ in 0..tasks {
                    let done = done.clone();
                    self.tokio.spawn(async move {
                        body(work);
                        done.one();
                    });
                }
            }
            other => unreachable!("no system {other}"),
        }
        all.recv().expect("every task finishes");
        start.elapsed()
    }
}

const SYSTEMS: [&str; 3] = ["fila", "rayon", "tokio"];

fn main() {
    let args = Args::parse();
    let tasks = args.tasks as usize;
    let chosen: Vec<&'static str> = SYSTEMS
        .into_iter()
        .filter(|s| args.systems.iter().any(|c| c == s))
        .collect();
    if chosen.len() != args.systems.len() {
        eprintln!(
            "scheduler-table: systems are {SYSTEMS:?}, got {:?}",
            args.systems
        );
        std::process::exit(2);
    }
    let p = fila_runtime::allowed_cpus().len().max(1);
    let systems = Systems::start(p);

    // One untimed pass of everything: thread start-up, page faults, caches.
    for (_, work) in BODIES {
        for &system in &chosen {
            systems.run(system, work, tasks);
        }
    }
    let n = chosen.len();
    let mut rates = vec![Vec::new(); n * BODIES.len()];
    for round in 0..args.rounds as usize {
        for (b, (_, work)) in BODIES.iter().enumerate() {
            for k in 0..n {
                // Rotate who goes first, so no system always follows the same one.
                let s = (round + k) % n;
                let elapsed = systems.run(chosen[s], *work, tasks);
                rates[b * n + s].push(tasks as f64 / elapsed.as_secs_f64());
            }
        }
    }
    let rows: Vec<Row> = BODIES
        .iter()
        .enumerate()
        .flat_map(|(b, (body, _))| {
            let (rates, chosen) = (&rates, &chosen);
            chosen.iter().enumerate().map(move |(s, &system)| Row {
                system,
                body,
                tasks_per_s: median(&rates[b * n + s]),
            })
        })
        .collect();

    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialize"));
        return;
    }
    println!(
        "{tasks} tasks per batch, {p} threads per system, median of {} interleaved rounds",
        args.rounds
    );
    println!(
        "{:<8} {:<10} {:>14} {:>10}",
        "system", "body", "tasks/s", "vs rayon"
    );
    for row in &rows {
        let rayon = rows
            .iter()
            .find(|r| r.system == "rayon" && r.body == row.body)
            .map_or(f64::NAN, |r| r.tasks_per_s);
        println!(
            "{:<8} {:<10} {:>14.0} {:>9.3}x",
            row.system,
            row.body,
            row.tasks_per_s,
            row.tasks_per_s / rayon
        );
    }
}
