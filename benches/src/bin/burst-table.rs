//! One table: fila at each window and both baselines on the same full-size
//! burst, in one process, against the ideal of `docs/design/measurement.md`,
//! with w calibrated in this run (before and after all the systems).
//!
//!     cargo run --release -p fila-benches --bin burst-table -- --burst 10000 [--stages 10,20,30,20,10] [--json]

use clap::Parser;
use fila_benches::{cpus, systems, whole_message, BurstTimes, Message};
use fila_pipeline::report::{latency_histogram, LatencyMs, Report};
use fila_runtime::ideal::{
    calibrate, calibration_messages_per_thread, Ideal, WARM_UP_MESSAGES_PER_THREAD,
};
use fila_runtime::{DEFAULT_WINDOW_PER_WORKER, MAX_WINDOW};

use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    about = "fila at each window against the Tokio event-loop design and rayon, on one burst"
)]
struct Args {
    /// Messages in the burst.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    burst: u64,
    /// The five stage values of every message.
    #[arg(long, default_value = "10,20,30,20,10", value_parser = fila_pipeline::reference::parse_stages)]
    stages: [u32; 5],
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    json: bool,
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
    let message: Message = args.stages;
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
    let mut runs: Vec<(String, Option<usize>, BurstTimes)> = Vec::new();
    for &w in &windows {
        eprintln!("fila, window {w} ...");
        runs.push(("fila".into(), Some(w), systems::fila(p, w, message, n)));
    }
    eprintln!("tokio-event-loop ...");
    runs.push((
        "tokio-event-loop".into(),
        None,
        systems::tokio_event_loop(p, message, n),
    ));
    eprintln!("rayon ...");
    runs.push(("rayon".into(), None, systems::rayon(p, message, n)));

    let after = calibrate(&pinned, per_thread, |_| whole_message(&message));
    let ideal = Ideal::from_calibrations(p, before, after);

    let rows: Vec<Row> = runs
        .into_iter()
        .map(|(system, window, times)| {
            let mut hist = latency_histogram();
            for d in &times.done {
                hist.saturating_record(d.as_micros() as u64);
            }
            let mut report = Report::new(
                n as u64,
                times.makespan(),
                LatencyMs::from_micros(&hist),
                Some(&ideal),
            );
            report.workers = Some(p);
            Row {
                system,
                window,
                report,
            }
        })
        .collect();

    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialize"));
        return;
    }
    println!(
        "burst of {n}, stages {:?}, {p} workers; w = {:.3} ms (calibration spread {:.1}%{}), ideal {:.1} msg/s, ideal mean {:.1} ms",
        message,
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
