//! Running totals per key on fila, with state that survives restarts:
//! Kafka records keyed by, say, an account, each a JSON number (an
//! amount), and for every record `{"key": k, "count": n, "total": t}` out,
//! n and t being the key's count and total so far, under the same key.
//! A record without a key, or whose value is not a number, is
//! dead-lettered.
//!
//! The input is keyed by the key the job counts by, so the stage declares
//! it (`by_input_partition`): it reads the input's partitions as they are,
//! with no repartition topic, and keeps its state per input partition. On
//! Kafka the state is written to a changelog topic and restored from it
//! after a restart or a rebalance: under `--exactly-once` a key's counts
//! go 1, 2, ..., n however often fila crashes.
//!
//!     cargo run --release --example key_totals -- --source kafka \
//!         --input-topic payments --output-topic totals --group totals --exactly-once

use std::process::ExitCode;

use fila_pipeline::cli::{self, JobSpec};
use fila_pipeline::dataflow::{Job, Rejected};
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: cli::MiMalloc = cli::MiMalloc;

#[derive(Clone, Serialize, Deserialize)]
struct Total {
    key: String,
    count: u64,
    total: i64,
}

fn job() -> Job {
    Job::new("key totals")
        .decode(|input| {
            let key = input
                .key()
                .ok_or_else(|| Rejected::new("a record without a key"))?;
            Ok(Total {
                key: String::from_utf8_lossy(key).into_owned(),
                count: 1,
                total: input.json::<i64>()?,
            })
        })
        .key_by(|t: &Total| t.key.clone())
        .by_input_partition()
        .reduce("totals", |sum: &Total, t: Total| {
            Ok(Total {
                key: t.key,
                count: sum.count + t.count,
                total: sum.total + t.total,
            })
        })
        .sink_keyed(|t: &Total| {
            let out = serde_json::to_vec(t).expect("a total always serializes");
            (Some(t.key.as_bytes().to_vec()), out)
        })
}

fn main() -> ExitCode {
    cli::run_main(|_flags| {
        JobSpec::new(job()).generate(|i| {
            // Without Kafka there are no keys: every record is
            // dead-lettered. Run it on Kafka.
            (i % 100).to_string().into_bytes()
        })
    })
}
