//! `fila load`: the load client of the thesis. It produces one burst of the
//! reference message to the input topic, stamping each `timestamp` as it
//! produces it, reads the output topic from where it ended before the burst,
//! and reports throughput, latency, lost and duplicated ids.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::reference::{self, FibRecord};
use crate::report::{latency_histogram, LatencyMs, Report};
use anyhow::Context;
use fila_connectors::{TopicReader, TopicWriter};

use super::{LoadArgs, ReportFormat};

/// Messages stamped and handed to the producer at a time. Each message is
/// stamped as it is built, just before its chunk is sent, and the producer
/// sends while the next chunks are built: no chunk waits for the one
/// before it to be acknowledged, so the burst reaches the broker as fast as
/// the producer can batch it, and a message's latency starts when it was
/// ready to go. (Waiting for each chunk's acknowledgement would pace a
/// light job's burst by the broker's round trips, which every system under
/// test would then show as its throughput.) The `kafka` client cannot send
/// ahead, and waits for each chunk.
const CHUNK: usize = 1000;

/// Per id of this burst: how often it came back, and its first latency.
struct Seen {
    count: Vec<u32>,
    latency_ms: Vec<Option<u64>>,
    distinct: u64,
    last_seen_ms: u64,
}

pub fn load(args: LoadArgs) -> anyhow::Result<()> {
    let n = args.burst as usize;
    // Ids unique to this run, so records of earlier runs on the same
    // topics are never counted: the second of the run, times a million.
    let base = reference::now_ms() / 1000 * 1_000_000;

    let c = &args.cluster;
    let client = c.kafka_client;
    let cluster = c.cluster().context("reading the client properties")?;
    let start = TopicReader::end_offsets(client, &cluster, &c.output_topic)
        .with_context(|| format!("reading the end offsets of output topic {}", c.output_topic))?;
    let mut reader = TopicReader::new(client, &cluster, &c.output_topic, start)
        .with_context(|| format!("connecting to output topic {}", c.output_topic))?;
    let mut writer = TopicWriter::connect(client, &cluster, &[&c.input_topic])
        .with_context(|| format!("connecting to input topic {}", c.input_topic))?;

    // The burst's clock starts with its first record: the reader must be
    // fetching by then, or its start-up counts as the system's latency.
    if !reader
        .wait_caught_up(Duration::from_secs(10))
        .context("reading the output topic")?
    {
        tracing::warn!("the output topic's reader did not catch up within 10 s; going on");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    // Set when producing fails: the reader stops waiting for outputs that
    // cannot come, and the error is reported at once.
    let failed = AtomicBool::new(false);
    let (first_input_ms, seen) = std::thread::scope(|s| -> anyhow::Result<(u64, Seen)> {
        // The reader runs from the start, so an output is timed when it
        // shows up, not when the producer is done.
        let consumer = s.spawn(|| -> anyhow::Result<Seen> {
            let mut seen = Seen {
                count: vec![0; n],
                latency_ms: vec![None; n],
                distinct: 0,
                last_seen_ms: 0,
            };
            while seen.distinct < n as u64
                && Instant::now() < deadline
                && !failed.load(Ordering::Relaxed)
            {
                let batch = reader.fetch().context("reading the output topic")?;
                let now = reference::now_ms();
                for fetched in batch {
                    let Ok(record) = serde_json::from_slice::<FibRecord>(&fetched.payload) else {
                        continue;
                    };
                    let Some(i) = record.id.checked_sub(base).filter(|&i| i < n as u64) else {
                        continue;
                    };
                    let i = i as usize;
                    seen.count[i] += 1;
                    if seen.count[i] == 1 {
                        seen.distinct += 1;
                        seen.latency_ms[i] = Some(now.saturating_sub(record.timestamp));
                        seen.last_seen_ms = now;
                    }
                }
            }
            Ok(seen)
        });

        let mut first_input_ms = None;
        let mut chunk = Vec::with_capacity(CHUNK);
        let produced = (0..n)
            .step_by(CHUNK)
            .try_for_each(|start| {
                chunk.clear();
                for i in start..(start + CHUNK).min(n) {
                    let ts = reference::now_ms();
                    first_input_ms.get_or_insert(ts);
                    chunk.push(reference::message(base + i as u64, args.stages.0, ts));
                }
                let records: Vec<(&str, &[u8])> = chunk
                    .iter()
                    .map(|v| (c.input_topic.as_str(), v.as_slice()))
                    .collect();
                writer.send(&records)
            })
            .and_then(|()| writer.flush());
        if let Err(e) = produced {
            failed.store(true, Ordering::Relaxed);
            return Err(anyhow::Error::new(e)
                .context(format!("producing to input topic {}", c.input_topic)));
        }
        let seen = consumer.join().expect("the reader thread does not panic")?;
        Ok((first_input_ms.unwrap_or(0), seen))
    })?;

    let mut hist = latency_histogram();
    for ms in seen.latency_ms.iter().flatten() {
        hist.saturating_record(ms * 1000);
    }
    let lost = n as u64 - seen.distinct;
    let duplicates: u64 = seen.count.iter().map(|&c| c.saturating_sub(1) as u64).sum();
    let elapsed = Duration::from_millis(seen.last_seen_ms.saturating_sub(first_input_ms));
    let mut report = Report::new(seen.distinct, elapsed, LatencyMs::from_micros(&hist), None);
    report.lost = Some(lost);
    report.duplicates = Some(duplicates);

    if let Some(path) = &args.csv {
        write_csv(path, &seen.latency_ms).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot(path, &seen.latency_ms).with_context(|| format!("writing {}", path.display()))?;
    }
    if lost > 0 {
        eprintln!(
            "fila: {lost} of {n} ids did not come back within {} s",
            args.timeout_s
        );
    }
    match args.report {
        ReportFormat::Json => println!("{}", report.to_json()),
        ReportFormat::Text => print!("{}", report.to_text()),
    }
    Ok(())
}

fn write_csv(path: &Path, latency_ms: &[Option<u64>]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "id,latency_ms")?;
    for (i, ms) in latency_ms.iter().enumerate() {
        if let Some(ms) = ms {
            writeln!(out, "{i},{ms}")?;
        }
    }
    out.flush()
}

fn plot(path: &Path, latency_ms: &[Option<u64>]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let points: Vec<(u64, u64)> = latency_ms
        .iter()
        .enumerate()
        .filter_map(|(i, ms)| ms.map(|ms| (i as u64, ms)))
        .collect();
    let max_ms = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("fila: latency per message ({} messages)", latency_ms.len()),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0u64..latency_ms.len().max(1) as u64,
            0u64..max_ms + max_ms / 20 + 1,
        )?;
    chart
        .configure_mesh()
        .x_desc("message id")
        .y_desc("latency (ms)")
        .draw()?;
    chart.draw_series(
        points
            .iter()
            .map(|&(x, y)| Circle::new((x, y), 1, BLUE.filled())),
    )?;
    root.present()?;
    Ok(())
}
