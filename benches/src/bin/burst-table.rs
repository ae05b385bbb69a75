//! One table: fila at each window and both baselines on the same full-size
//! burst, in one process, against the ideal of `docs/design/measurement.md`,
//! with w calibrated in this run (before and after all the systems).
//! With `--repeat R`, every system runs R times, interleaved (each round
//! runs them all, rotating which goes first), and each figure is the median
//! over the rounds.
//!
//!     cargo run --release -p fila-benches --bin burst-table -- --burst 10000 [--stages 10,20,30,20,10] [--repeat 3] [--json]

use clap::Parser;
use fila_benches::{cpus, median, systems, whole_message, BurstTimes, Message};
use fila_pipeline::report::{latency_histogram, LatencyMs, Report};
use fila_runtime::ideal::{
    calibrate, calibration_messages_per_thread, Ideal, WARM_UP_MESSAGES_PER_THREAD,
};
use fila_runtime::{DEFAULT_WINDOW_PER_WORKER, MAX_WINDOW};

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    about = "fila at each window against the Tokio event-loop design and rayon, on one burst"
)]
struct Args {
    /// Messages in the burst.
    #[arg(long, default_value_t = fila_pipeline::reference::DEFAULT_BURST, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    burst: u64,
    /// The five stage values of every message.
    #[arg(long, default_value_t = fila_pipeline::reference::Stages(fila_pipeline::reference::DEFAULT_STAGES))]
    stages: fila_pipeline::reference::Stages,
    /// Rounds: every system runs once per round, interleaved with the
    /// others, and the table quotes medians over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeat: u64,
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    json: bool,
}

/// A system to run: its name and, for fila, the window.
#[derive(Clone, Copy)]
struct Config {
    system: &'static str,
    window: Option<usize>,
}

impl Config {
    fn run(self, p: usize, message: Message, n: usize) -> BurstTimes {
        match (self.system, self.window) {
            ("fila", Some(w)) => systems::fila(p, w, message, n),
            ("tokio-event-loop", None) => systems::tokio_event_loop(p, message, n),
            ("rayon", None) => systems::rayon(p, message, n),
            _ => unreachable!("no such system"),
        }
    }
}

/// The figures of one configuration, median over the rounds.
fn median_report(n: usize, rounds: &[BurstTimes], ideal: &Ideal) -> Report {
    let figures: Vec<(f64, LatencyMs)> = rounds
        .iter()
        .map(|times| {
            let mut hist = latency_histogram();
            for d in &times.done {
                hist.saturating_record(d.as_micros() as u64);
            }
            (
                times.makespan().as_secs_f64(),
                LatencyMs::from_micros(&hist),
            )
        })
        .collect();
    let of = |f: fn(&(f64, LatencyMs)) -> f64| median(&figures.iter().map(f).collect::<Vec<_>>());
    let latency = LatencyMs {
        mean: of(|x| x.1.mean),
        p50: of(|x| x.1.p50),
        p99: of(|x| x.1.p99),
        max: of(|x| x.1.max),
    };
    Report::new(
        n as u64,
        Duration::from_secs_f64(of(|x| x.0)),
        latency,
        Some(ideal),
    )
}

#[derive(Serialize)]
struct Row {
    system: String,
    /// fila's window; null for the baselines, which have none.
    window: Option<usize>,
    #[serde(flatten)]
    report: Report,
}

fn main() {
    let args = Args::parse();
    let n = args.burst as usize;
    if let Err(e) =
        fila_pipeline::reference::check_stages(args.stages.0, fila_pipeline::reference::MAX_STAGE)
    {
        eprintln!("burst-table: --stages: {e}");
        std::process::exit(2);
    }
    let message: Message = args.stages.0;
    let p = fila_runtime::allowed_cpus().len().max(1);
    let pinned = cpus(p);
    let per_thread = calibration_messages_per_thread(n, p);

    calibrate(&pinned, WARM_UP_MESSAGES_PER_THREAD, |_| {
        whole_message(&message)
    });
    let before = calibrate(&pinned, per_thread, |_| whole_message(&message));

    let default_window = DEFAULT_WINDOW_PER_WORKER * p;
    let mut windows = vec![1, p, 2 * p, 4 * p, 16 * p, 64 * p, n.min(MAX_WINDOW)];
    windows.dedup();
    let mut configs: Vec<Config> = windows
        .iter()
        .map(|&w| Config {
            system: "fila",
            window: Some(w),
        })
        .collect();
    configs.push(Config {
        system: "tokio-event-loop",
        window: None,
    });
    configs.push(Config {
        system: "rayon",
        window: None,
    });
    let mut runs: Vec<Vec<BurstTimes>> = vec![Vec::new(); configs.len()];
    for round in 0..args.repeat as usize {
        for k in 0..configs.len() {
            // Rotate who goes first, so no system always follows the same one.
            let c = (round + k) % configs.len();
            let config = configs[c];
            eprintln!(
                "round {}/{}: {}{} ...",
                round + 1,
                args.repeat,
                config.system,
                config
                    .window
                    .map_or(String::new(), |w| format!(", window {w}"))
            );
            runs[c].push(config.run(p, message, n));
        }
    }

    let after = calibrate(&pinned, per_thread, |_| whole_message(&message));
    let ideal = Ideal::from_calibrations(p, before, after);

    let rows: Vec<Row> = configs
        .iter()
        .zip(&runs)
        .map(|(config, rounds)| {
            let mut report = median_report(n, rounds, &ideal);
            report.workers = Some(p);
            Row {
                system: config.system.to_string(),
                window: config.window,
                report,
            }
        })
        .collect();

    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialize"));
        return;
    }
    println!(
        "burst of {n}, stages {:?}, {p} workers, median of {} interleaved rounds; w = {:.3} ms (calibration spread {:.1}%{}), ideal {:.1} msg/s, ideal mean {:.1} ms",
        message,
        args.repeat,
        ideal.work_per_message.as_secs_f64() * 1e3,
        ideal.spread * 100.0,
        if ideal.is_noisy() { ", noisy" } else { "" },
        ideal.throughput(),
        ideal.mean_latency(n).as_secs_f64() * 1e3,
    );
    println!(
        "{:<18} {:>14} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "system", "window", "msg/s", "mean ms", "p99 ms", "efficiency", "lat/ideal"
    );
    for row in &rows {
        let window = match row.window {
            Some(w) if w == default_window => format!("{w} (default)"),
            Some(w) if w == n.min(MAX_WINDOW) => format!("{w} (all)"),
            Some(w) => w.to_string(),
            None => "-".into(),
        };
        let r = &row.report;
        println!(
            "{:<18} {:>14} {:>12.1} {:>10.1} {:>10.1} {:>10.3} {:>8.3}",
            row.system,
            window,
            r.throughput_msgs_per_s,
            r.latency_ms.mean,
            r.latency_ms.p99,
            r.efficiency.unwrap_or(0.0),
            r.latency_ratio.unwrap_or(0.0)
        );
    }
    let find = |system: &str, window: Option<usize>| {
        rows.iter()
            .find(|r| r.system == system && r.window == window)
    };
    if let (Some(fila), Some(tokio)) = (
        find("fila", Some(default_window)),
        find("tokio-event-loop", None),
    ) {
        println!(
            "fila at the default window vs tokio-event-loop: mean latency {:.3}x, throughput {:.3}x",
            fila.report.latency_ms.mean / tokio.report.latency_ms.mean,
            fila.report.throughput_msgs_per_s / tokio.report.throughput_msgs_per_s
        );
    }
}
