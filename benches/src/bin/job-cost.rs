//! What `--ordered` and keyed state cost: the reference job through the
//! whole driver (source, runtime, sink thread, acknowledgements) on one
//! generated burst, plain, with `--ordered`, and with a keyed reduce
//! appended, each run `--repeat` times, interleaved, and reported as
//! medians with their ratio to the plain job.
//!
//!     cargo run --release -p fila-benches --bin job-cost -- [--burst 10000] [--stages 10,20,30,20,10] [--keys 64] [--repeat 3]
//!
//! Heavy stages (the default) show the cost at the reference grain, where
//! it should vanish; light ones (`--stages 1,1,1,1,1`) show it per record.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fila_benches::median;
use fila_connectors::{BurstSource, DiscardSink};
use fila_pipeline::dataflow::Job;
use fila_pipeline::driver::Driver;
use fila_pipeline::reference::{self, FibRecord};
use fila_pipeline::report::LatencyMs;
use fila_runtime::{Runtime, Workers};

#[derive(Debug, Parser)]
#[command(about = "The reference job plain, with --ordered, and with keyed state, on one burst")]
struct Args {
    /// Messages in the burst.
    #[arg(long, default_value_t = fila_pipeline::reference::DEFAULT_BURST, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    burst: u64,
    /// The five stage values of every message.
    #[arg(long, default_value_t = reference::Stages(reference::DEFAULT_STAGES))]
    stages: reference::Stages,
    /// Distinct keys of the keyed variant (the record id modulo this).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Rounds: each variant runs once per round, rotating which goes first.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeat: u64,
}

#[derive(Clone, Copy)]
enum Variant {
    Plain,
    Ordered,
    Keyed,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Plain, Variant::Ordered, Variant::Keyed];

    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "reference",
            Variant::Ordered => "reference --ordered",
            Variant::Keyed => "reference + keyed reduce",
        }
    }

    fn job(self, keys: u64) -> Job {
        match self {
            Variant::Plain | Variant::Ordered => reference::job(),
            // A running count per key, carried in the record's timestamp
            // field: the cheapest reduce, so the state itself is measured.
            Variant::Keyed => reference::stages(reference::MAX_STAGE)
                .key_by(move |r: &FibRecord| r.id % keys)
                .reduce("count", |count: &FibRecord, r: FibRecord| {
                    Ok(FibRecord {
                        timestamp: count.timestamp + 1,
                        ..r
                    })
                })
                .sink(reference::encode),
        }
    }
}

/// Seconds from the first arrival to the last completion, and latencies.
fn run_once(args: &Args, variant: Variant) -> (f64, LatencyMs) {
    let rt = Runtime::builder()
        .workers(Workers::Logical)
        .build()
        .expect("starting the worker pool");
    let stages = args.stages.0;
    let mut source = BurstSource::new(args.burst, move |id| reference::message(id, stages, 0));
    let summary = Driver::new()
        .ordered(matches!(variant, Variant::Ordered))
        .run(
            &rt,
            Arc::new(variant.job(args.keys)),
            &mut source,
            Box::new(DiscardSink),
        )
        .expect("an in-process run does not fail");
    assert_eq!(
        summary.outputs,
        args.burst,
        "{}: every record out",
        variant.name()
    );
    rt.shutdown();
    (
        summary.elapsed().as_secs_f64(),
        LatencyMs::from_micros(&summary.latencies_us),
    )
}

fn main() {
    let args = Args::parse();
    if let Err(e) = reference::check_stages(args.stages.0, reference::MAX_STAGE) {
        eprintln!("job-cost: --stages: {e}");
        std::process::exit(2);
    }
    let mut rounds: Vec<Vec<(f64, LatencyMs)>> = vec![Vec::new(); Variant::ALL.len()];
    for round in 0..args.repeat as usize {
        for i in 0..Variant::ALL.len() {
            let v = (round + i) % Variant::ALL.len();
            rounds[v].push(run_once(&args, Variant::ALL[v]));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let medians: Vec<(f64, f64, f64)> = rounds
        .iter()
        .map(|r| {
            let elapsed = median(&r.iter().map(|x| x.0).collect::<Vec<_>>());
            let mean = median(&r.iter().map(|x| x.1.mean).collect::<Vec<_>>());
            let p99 = median(&r.iter().map(|x| x.1.p99).collect::<Vec<_>>());
            (elapsed, mean, p99)
        })
        .collect();
    let (base_elapsed, base_mean, _) = medians[0];
    println!(
        "{} messages, stages {:?}, {} keys, median of {} rounds",
        args.burst, args.stages, args.keys, args.repeat
    );
    println!(
        "{:<26} {:>10} {:>12} {:>12} {:>11} {:>11}",
        "job", "msg/s", "mean ms", "p99 ms", "time ×", "mean ×"
    );
    for (variant, (elapsed, mean, p99)) in Variant::ALL.iter().zip(&medians) {
        println!(
            "{:<26} {:>10.1} {:>12.2} {:>12.2} {:>11.3} {:>11.3}",
            variant.name(),
            args.burst as f64 / elapsed,
            mean,
            p99,
            elapsed / base_elapsed,
            mean / base_mean
        );
    }
}
