//! Per-key sums over 1 s tumbling windows of event time on fila: JSON
//! lines `{"key": "k", "value": 3, "time": 1700000000123}` in (`time` in
//! milliseconds; without it, the Kafka record's timestamp), and once a
//! window has closed, one `{"key", "start", "end", "sum"}` per key out.
//! A record more than 1 s behind the latest time of its partition finds
//! its window closed, and is dead-lettered as late. The end of the input
//! closes every window.
//!
//! Windows are kept per partition, so on Kafka the input is keyed by `key`
//! (a key in two partitions gets a sum in each), and the stage declares it
//! (`by_input_partition`), which spares it a repartition topic. On Kafka
//! its open windows are written to a changelog topic and restored after a
//! restart or a rebalance: under `--exactly-once` each window's sum is
//! exact and emitted once however often fila crashes.
//!
//!     printf '%s\n' '{"key":"a","value":1,"time":100}' '{"key":"a","value":2,"time":900}' \
//!         '{"key":"b","value":5,"time":1500}' \
//!       | cargo run --release --example window_sums -- --source stdin

use std::process::ExitCode;
use std::time::Duration;

use fila_pipeline::cli::{self, JobSpec};
use fila_pipeline::dataflow::{Job, Rejected};
use fila_pipeline::state::{Tumbling, Windowed};
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: cli::MiMalloc = cli::MiMalloc;

#[derive(Clone, Serialize, Deserialize)]
struct Reading {
    key: String,
    value: i64,
    time: Option<i64>,
}

fn job() -> Job {
    Job::new("window sums")
        .decode(|input| {
            let mut reading: Reading = input.json()?;
            reading.time = reading.time.or(input.timestamp());
            match reading.time {
                Some(_) => Ok(reading),
                None => Err(Rejected::new("no `time` and no record timestamp")),
            }
        })
        .key_by(|r: &Reading| r.key.clone())
        .by_input_partition()
        .window(
            Tumbling::of(Duration::from_secs(1)).out_of_orderness(Duration::from_secs(1)),
            |r: &Reading| r.time.unwrap_or_default(),
        )
        .reduce("sum", |sum: &Reading, r: Reading| {
            Ok(Reading {
                value: sum.value + r.value,
                ..sum.clone()
            })
        })
        .sink_keyed(|w: &Windowed<String, Reading>| {
            let out = serde_json::json!({
                "key": w.key, "start": w.start, "end": w.end, "sum": w.value.value
            });
            (
                Some(w.key.as_bytes().to_vec()),
                out.to_string().into_bytes(),
            )
        })
}

fn main() -> ExitCode {
    cli::run_main(|_flags| {
        JobSpec::new(job()).generate(|i| {
            // Ten keys, a reading every 10 ms of event time.
            let time = i as i64 * 10;
            serde_json::json!({ "key": format!("k{}", i % 10), "value": 1, "time": time })
                .to_string()
                .into_bytes()
        })
    })
}
