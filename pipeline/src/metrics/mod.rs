//! The metrics page: a run's counters and the scheduler's statistics in
//! the Prometheus text format, encoded by `prometheus-client` (which
//! escapes help text and label values). [`http`] serves it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use fila_connectors::Uncommitted;
use fila_runtime::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::counters::Counters;

pub mod http;

pub use http::{Answer, MetricsListener};

/// The metrics page for `stats` and the run's `counters`, with the
/// records not yet committed when the run's source commits.
pub fn render(stats: &Stats, counters: &Counters) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Page {
        stats: stats.clone(),
        outputs: counters.outputs.load(Relaxed),
        dead_letters: counters.dead_letters.load(Relaxed),
        panicked: counters.panicked.load(Relaxed),
        latency: counters.latency.clone(),
        uncommitted: counters.uncommitted(),
        commits: counters.commits.load(Relaxed),
        aborts: counters.aborts.load(Relaxed),
        commit_seconds: counters.commit_seconds.clone(),
        restores: counters.restores.load(Relaxed),
        restored_records: counters.restored_records.load(Relaxed),
        restore_micros: counters.restore_micros.load(Relaxed),
        input_records: counters.input_records.load(Relaxed),
        input_bytes: counters.input_bytes.load(Relaxed),
        output_bytes: counters.output_bytes.load(Relaxed),
        superseded: counters.superseded.load(Relaxed),
        combined: counters.combined.load(Relaxed),
        sources: counters
            .sources()
            .iter()
            .map(|status| SourcePage {
                topic: status.topic.clone(),
                lag: status.lag(),
                rebalances: status.rebalances.load(Relaxed),
                unready: status.unready(),
            })
            .collect(),
    }));
    let mut page = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut page, &registry)
        .expect("writing to a String cannot fail");
    page
}

/// The `Content-Type` of the page `render` makes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One scrape's values. The registry lives for one scrape only, so the
/// collector owns a copy of what it encodes.
#[derive(Debug)]
struct Page {
    stats: Stats,
    outputs: u64,
    dead_letters: u64,
    panicked: u64,
    latency: Histogram,
    uncommitted: Option<Uncommitted>,
    commits: u64,
    aborts: u64,
    commit_seconds: Histogram,
    restores: u64,
    restored_records: u64,
    restore_micros: u64,
    input_records: u64,
    input_bytes: u64,
    output_bytes: u64,
    superseded: u64,
    combined: u64,
    /// One per segment: the input's source, and each repartition topic's.
    sources: Vec<SourcePage>,
}

/// What a source that reports on itself (Kafka) adds to the page.
#[derive(Debug)]
struct SourcePage {
    topic: String,
    /// Per partition, records behind the end of the log.
    lag: BTreeMap<i32, i64>,
    rebalances: u64,
    /// Spells of not being ready, and the time spent not ready.
    unready: (u64, Duration),
}

impl Collector for Page {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.stats;
        // Counter names get their `_total` from the encoder.
        labeled(
            &mut e,
            "fila_records",
            None,
            "Records finished, by outcome.",
            "outcome",
            [
                ("output".to_owned(), ConstCounter::new(self.outputs)),
                (
                    "dead_letter".to_owned(),
                    ConstCounter::new(self.dead_letters),
                ),
            ],
        )?;
        one(
            &mut e,
            "fila_input_records",
            "Records read from the source.",
            ConstCounter::new(self.input_records),
        )?;
        one(
            &mut e,
            "fila_input_bytes",
            "Bytes of the records read from the source (payloads).",
            ConstCounter::new(self.input_bytes),
        )?;
        one(
            &mut e,
            "fila_output_bytes",
            "Bytes of the outputs written to the sink (payloads).",
            ConstCounter::new(self.output_bytes),
        )?;
        one(
            &mut e,
            "fila_outputs_superseded",
            "Outputs not written under --latest-per-key: a later output of their key came in the same batch.",
            ConstCounter::new(self.superseded),
        )?;
        one(
            &mut e,
            "fila_repartition_combined",
            "Records for a repartition topic folded into an earlier one of their key before it was written (reduce_combined).",
            ConstCounter::new(self.combined),
        )?;
        if !self.sources.is_empty() {
            SourcePage::encode(&self.sources, &mut e)?;
        }
        one(
            &mut e,
            "fila_records_panicked",
            "Dead letters whose stage panicked.",
            ConstCounter::new(self.panicked),
        )?;
        self.latency.encode(e.encode_descriptor(
            "fila_record_latency",
            "Latency of each record that produced an output: from when it became available to fila until its output was emitted.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)?;
        one(
            &mut e,
            "fila_window",
            "The admission window W now: it grows while records are light, unless --window fixed it.",
            ConstGauge::new(stats.window as u64),
        )?;
        one(
            &mut e,
            "fila_in_flight",
            "Window slots taken: records admitted and not yet finished, plus one while the source waits for input.",
            ConstGauge::new(stats.in_flight as u64),
        )?;
        one(
            &mut e,
            "fila_max_in_flight",
            "The most records ever in flight at once.",
            ConstGauge::new(stats.max_in_flight as u64),
        )?;
        if let Some(uncommitted) = self.uncommitted {
            one(
                &mut e,
                "fila_uncommitted",
                "Records read and not yet covered by a commit: what a crash would replay.",
                ConstGauge::new(uncommitted.records),
            )?;
            one(
                &mut e,
                "fila_uncommitted_bytes",
                "Bytes of the records read and not yet covered by a commit.",
                ConstGauge::new(uncommitted.bytes),
            )?;
            labeled(
                &mut e,
                "fila_commits",
                None,
                "Commits of input offsets (under exactly-once, transactions), by outcome.",
                "outcome",
                [
                    ("committed".to_owned(), ConstCounter::new(self.commits)),
                    ("aborted".to_owned(), ConstCounter::new(self.aborts)),
                ],
            )?;
            self.commit_seconds.encode(e.encode_descriptor(
                "fila_commit",
                "How long each commit took (under exactly-once, each transaction's commit).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?)?;
        }
        if self.restores > 0 {
            one(
                &mut e,
                "fila_state_restores",
                "Restores of an input partition's keyed state from its changelogs.",
                ConstCounter::new(self.restores),
            )?;
            one(
                &mut e,
                "fila_state_restored_records",
                "Changelog records read by restores.",
                ConstCounter::new(self.restored_records),
            )?;
            one(
                &mut e,
                "fila_state_restore_seconds",
                "Time spent restoring keyed state, in seconds.",
                ConstCounter::new(self.restore_micros as f64 / 1e6),
            )?;
        }
        let per_worker = |f: fn(&fila_runtime::WorkerStats) -> u64| {
            stats
                .workers
                .iter()
                .enumerate()
                .map(move |(i, w)| (i.to_string(), ConstCounter::new(f(w))))
        };
        labeled(
            &mut e,
            "fila_worker_tasks",
            None,
            "Tasks run, per worker.",
            "worker",
            per_worker(|w| w.tasks_run),
        )?;
        labeled(
            &mut e,
            "fila_worker_stolen",
            None,
            "Tasks stolen from another worker, per worker.",
            "worker",
            per_worker(|w| w.tasks_stolen),
        )?;
        labeled(
            &mut e,
            "fila_worker_parks",
            None,
            "Times a worker parked for lack of work.",
            "worker",
            per_worker(|w| w.parks),
        )?;
        labeled(
            &mut e,
            "fila_worker_busy",
            Some(Unit::Seconds),
            "Time a worker spent awake, running tasks or looking for them, rather than parked.",
            "worker",
            stats
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| (i.to_string(), ConstCounter::new(w.busy.as_secs_f64()))),
        )
    }
}

impl SourcePage {
    /// The sources' metrics: lag per topic and partition, and the rest
    /// added up over the sources (a re-keyed job reads its input and a
    /// repartition topic per keyed stage, each in a group of its own).
    fn encode(sources: &[SourcePage], e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Lag is in records: the unit goes in the name by hand, as the
        // encoder knows only its own units.
        let mut family = e.encode_descriptor(
            "fila_consumer_lag_records",
            "Records from this member's committed offset to the end of the log, per partition it reads, from the Kafka client's statistics (each second).",
            None,
            MetricType::Gauge,
        )?;
        for source in sources {
            for (partition, lag) in &source.lag {
                let labels = [
                    ("topic", source.topic.clone()),
                    ("partition", partition.to_string()),
                ];
                ConstGauge::new(*lag).encode(family.encode_family(&labels)?)?;
            }
        }
        let sum = |f: &dyn Fn(&SourcePage) -> u64| sources.iter().map(f).sum::<u64>();
        one(
            e,
            "fila_consumer_total_lag_records",
            "Consumer lag summed over the partitions this member reads, of every topic it reads.",
            ConstGauge::new(sources.iter().flat_map(|s| s.lag.values()).sum::<i64>()),
        )?;
        one(
            e,
            "fila_rebalances",
            "Rebalances of the consumer groups this member took part in (each assignment and each revocation).",
            ConstCounter::new(sum(&|s| s.rebalances)),
        )?;
        one(
            e,
            "fila_source_not_ready",
            "Spells of a source not being ready (joining its group, each revocation), counted as each begins.",
            ConstCounter::new(sum(&|s| s.unready.0)),
        )?;
        one(
            e,
            "fila_source_not_ready_seconds",
            "Time the sources were not ready, each source's spells added, the spells under way included.",
            ConstCounter::new(
                sources
                    .iter()
                    .map(|s| s.unready.1.as_secs_f64())
                    .sum::<f64>(),
            ),
        )
    }
}

/// Encodes a metric without labels.
fn one<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes a metric with one sample per value of `label`. The encoder
/// escapes the values.
fn labeled<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    unit: Option<Unit>,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some(metric_type) = samples.peek().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (value, metric) in samples {
        metric.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use std::time::Duration;

    fn stats() -> Stats {
        Stats {
            workers: vec![
                fila_runtime::WorkerStats {
                    busy: Duration::from_millis(1500),
                    ..Default::default()
                },
                fila_runtime::WorkerStats {
                    tasks_run: 7,
                    ..Default::default()
                },
            ],
            window: 32,
            in_flight: 3,
            max_in_flight: 30,
            ..Default::default()
        }
    }

    fn has_line(page: &str, line: &str) {
        assert!(
            page.lines().any(|l| l == line),
            "missing {line:?} in\n{page}"
        );
    }

    #[test]
    fn page_has_every_metric_with_its_value() {
        let stats = stats();
        let counters = Counters::default();
        counters.outputs.store(5, Relaxed);
        counters.dead_letters.store(2, Relaxed);
        counters.superseded.store(9, Relaxed);
        counters.combined.store(11, Relaxed);
        assert!(!render(&stats, &counters).contains("fila_uncommitted"));
        let acks = std::sync::Arc::new(fila_connectors::Acks::new());
        for offset in 0..4 {
            let at = fila_connectors::Position {
                partition: 0,
                offset,
            };
            acks.track(at, 100);
        }
        counters.watch(acks);
        let page = render(&stats, &counters);
        for line in [
            "fila_records_total{outcome=\"output\"} 5",
            "fila_records_total{outcome=\"dead_letter\"} 2",
            "fila_records_panicked_total 0",
            "fila_outputs_superseded_total 9",
            "fila_repartition_combined_total 11",
            "fila_window 32",
            "fila_in_flight 3",
            "fila_max_in_flight 30",
            "fila_uncommitted 4",
            "fila_uncommitted_bytes 400",
            "fila_commits_total{outcome=\"committed\"} 0",
            "# TYPE fila_commit_seconds histogram",
            "fila_worker_tasks_total{worker=\"1\"} 7",
            "# TYPE fila_worker_parks_total counter",
            "# TYPE fila_worker_busy_seconds_total counter",
            "fila_worker_busy_seconds_total{worker=\"0\"} 1.5",
            "fila_worker_busy_seconds_total{worker=\"1\"} 0.0",
            "# TYPE fila_record_latency_seconds histogram",
        ] {
            has_line(&page, line);
        }
    }

    /// A re-keyed job reads its input and a repartition topic: both
    /// sources' lag is on the page, and the uncommitted records of both.
    #[test]
    fn every_segments_source_is_on_the_page() {
        let counters = Counters::default();
        for (topic, partition, behind) in [("lines", 0, 5), ("g-count-repartition", 1, 7)] {
            let status = std::sync::Arc::new(fila_connectors::SourceStatus::starting(topic, "x"));
            status.set_lag([(partition, behind)].into());
            counters.watch_source(status);
            let acks = std::sync::Arc::new(fila_connectors::Acks::new());
            acks.track(
                fila_connectors::Position {
                    partition,
                    offset: 0,
                },
                10,
            );
            counters.watch(acks);
        }
        let page = render(&stats(), &counters);
        for line in [
            "fila_consumer_lag_records{topic=\"lines\",partition=\"0\"} 5",
            "fila_consumer_lag_records{topic=\"g-count-repartition\",partition=\"1\"} 7",
            "fila_consumer_total_lag_records 12",
            "fila_source_not_ready_total 2",
            "fila_uncommitted 2",
            "fila_uncommitted_bytes 20",
        ] {
            has_line(&page, line);
        }
    }

    #[test]
    fn latency_histogram_counts_every_recorded_latency_in_its_bucket() {
        let counters = Counters::default();
        for micros in [20, 30, 700, 3_000_000] {
            counters.record_latency(Duration::from_micros(micros));
        }
        let page = render(&stats(), &counters);
        for line in [
            "fila_record_latency_seconds_bucket{le=\"1e-05\"} 0",
            "fila_record_latency_seconds_bucket{le=\"2.5e-05\"} 1",
            "fila_record_latency_seconds_bucket{le=\"5e-05\"} 2",
            "fila_record_latency_seconds_bucket{le=\"0.001\"} 3",
            "fila_record_latency_seconds_bucket{le=\"2.5\"} 3",
            "fila_record_latency_seconds_bucket{le=\"5\"} 4",
            "fila_record_latency_seconds_bucket{le=\"+Inf\"} 4",
            "fila_record_latency_seconds_count 4",
        ] {
            has_line(&page, line);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct Odd;
        impl Collector for Odd {
            fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                labeled(
                    &mut e,
                    "odd",
                    None,
                    "A label value with a quote, a backslash and a newline.",
                    "name",
                    [("a\"b\\c\nd".to_owned(), ConstCounter::new(1u64))],
                )
            }
        }
        registry.register_collector(Box::new(Odd));
        let mut page = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut page, &registry).unwrap();
        has_line(&page, r#"odd_total{name="a\"b\\c\nd"} 1"#);
    }

    #[test]
    fn busy_time_is_reported_for_every_worker_after_work_ran() {
        let rt = fila_runtime::Runtime::builder()
            .workers(fila_runtime::Workers::Count(3.try_into().unwrap()))
            .pin(false)
            .build()
            .unwrap();
        for _ in 0..100 {
            rt.admit(|cx| cx.spawn(|_| {}), |_| {}).unwrap();
        }
        let page = render(&rt.shutdown(), &Counters::default());
        for worker in 0..3 {
            let prefix = format!("fila_worker_busy_seconds_total{{worker=\"{worker}\"}} ");
            let busy: f64 = page
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no busy time for worker {worker} in\n{page}"))
                .parse()
                .unwrap();
            assert!(busy > 0.0, "worker {worker} busy {busy} in\n{page}");
        }
    }
}
