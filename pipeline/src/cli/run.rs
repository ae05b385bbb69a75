//! `fila run`, for the reference job or any other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::counters::Counters;
use crate::dataflow::Job;
use crate::driver::{Driver, DriverConfig, RunSummary};
use crate::health::Health;
use crate::metrics::{self, Answer, MetricsListener};
use crate::reference;
use crate::report::{LatencyMs, Report};
use anyhow::Context;
use fila_connectors::{
    changelog_reader, create_changelog, create_repartition, kafka_exactly_once, kafka_sink,
    kafka_source, Assignment, BurstSource, ChangelogReader, ClientKind, Cluster, DiscardSink,
    OffsetReset, Replica, Sink, SinkConfig, Source, SourceConfig, StdinSource, StdoutSink,
    TopicReader,
};
use fila_runtime::ideal::{
    calibrate, calibration_messages_per_thread, Calibration, Ideal, WARM_UP_MESSAGES_PER_THREAD,
};
use fila_runtime::Runtime;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{ReportFormat, RunArgs, SinkKind, SourceKind};

/// A job as `run` takes it: the job, and what `--source generate` makes.
pub struct JobSpec {
    pub job: Job,
    /// Message `i` of a generated burst. Without it, `--source generate`
    /// is refused.
    pub generate: Option<Generator>,
    /// A message to calibrate the work per message on: with it, a
    /// generated burst is compared with the ideal
    /// (docs/design/measurement.md). The reference job has one.
    pub calibration_sample: Option<Vec<u8>>,
}

/// Makes message `i` of a generated burst.
pub type Generator = Box<dyn FnMut(u64) -> Vec<u8> + Send>;

/// The reference job as `fila run` runs it.
pub fn reference_spec(args: &RunArgs) -> JobSpec {
    let (stages, timestamp) = (args.stages, reference::now_ms());
    JobSpec {
        job: reference::job_with_max_stage(args.max_stage),
        generate: Some(Box::new(move |id| {
            reference::message(id, stages.0, timestamp)
        })),
        calibration_sample: Some(reference::message(0, args.stages.0, reference::now_ms())),
    }
}

pub fn run(args: RunArgs, spec: JobSpec) -> anyhow::Result<()> {
    let JobSpec {
        job,
        generate,
        calibration_sample,
    } = spec;
    let generate = match (args.source, generate) {
        (SourceKind::Generate, None) => anyhow::bail!(
            "job {} has no generator for --source generate; use --source stdin or kafka",
            job.name()
        ),
        (_, generate) => generate,
    };
    let mut builder = Runtime::builder().workers(args.workers).pin(!args.no_pin);
    if let Some(window) = args.window {
        builder = builder.window(window);
    }
    let rt = builder.build().context("starting the worker pool")?;
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = MetricsListener::bind(addr)
                .with_context(|| format!("listening for metrics on {addr}"))?;
            let bound = listener
                .local_addr()
                .context("reading the metrics address")?;
            eprintln!("fila: metrics on http://{bound}/metrics");
            Some(listener)
        }
        None => None,
    };
    let counters = Counters::default();
    // Served from here on, so that a probe hears "starting" while the run
    // connects and calibrates.
    let health = Health::new(&rt, &counters, args.stuck_after.0);
    let result = std::thread::scope(|s| {
        if let Some(listener) = &metrics {
            s.spawn(|| {
                listener.serve(|path| match path {
                    "/metrics" => Some(Answer::ok(
                        metrics::CONTENT_TYPE,
                        metrics::render(&rt.stats(), &counters),
                    )),
                    path => health.answer(path),
                })
            });
        }
        let result = run_job(&args, &rt, job, generate, calibration_sample, &counters);
        if let Some(listener) = &metrics {
            listener.stop();
        }
        result
    });
    // `health` borrows the runtime: its last use above ends the borrow.
    rt.shutdown();
    result
}

fn run_job(
    args: &RunArgs,
    rt: &Runtime,
    job: Job,
    generate: Option<Generator>,
    calibration_sample: Option<Vec<u8>>,
    counters: &Counters,
) -> anyhow::Result<()> {
    // Installed before anything connects: a signal during start-up (which
    // may wait on the brokers for a while) is held and stops the run as
    // soon as it starts, cleanly, rather than killing the process.
    let signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let job = Arc::new(job);
    let sink_kind = args.sink.unwrap_or(match args.source {
        SourceKind::Generate => SinkKind::None,
        SourceKind::Stdin => SinkKind::Stdout,
        SourceKind::Kafka => SinkKind::Kafka,
    });
    let k = &args.kafka;
    let c = &k.cluster;
    let client = c.kafka_client;
    // Read once, and only for a run that talks to Kafka.
    let uses_kafka = args.source == SourceKind::Kafka || sink_kind == SinkKind::Kafka;
    let cluster = if uses_kafka {
        c.cluster().context("reading the client properties")?
    } else {
        Cluster::default()
    };
    let sink_config = || SinkConfig {
        cluster: cluster.clone(),
        input_topic: c.input_topic.clone(),
        output_topic: c.output_topic.clone(),
        dlq_topic: k.dlq_topic.clone(),
        retry_timeout: k.kafka_retry_timeout.0,
    };
    let sink_context = || format!("connecting the sink to output topic {}", c.output_topic);
    // Under exactly-once the sink is made with the source, whose group
    // metadata its transactions carry.
    let mut sink: Option<Box<dyn Sink>> = match sink_kind {
        _ if args.exactly_once => None,
        SinkKind::None => Some(Box::new(DiscardSink)),
        SinkKind::Stdout => Some(Box::new(StdoutSink::new())),
        SinkKind::Kafka => Some(kafka_sink(client, &sink_config()).with_context(sink_context)?),
    };

    // On the embedded burst, w is calibrated around the run
    // (docs/design/measurement.md), on the workers' CPUs. The burst's clock starts when its
    // source is made, so the first calibration comes before that.
    let sample = calibration_sample.filter(|_| args.source == SourceKind::Generate);
    let p = rt.workers();
    let cpus: Vec<Option<usize>> = rt.stats().workers.iter().map(|w| w.cpu).collect();
    let per_thread = calibration_messages_per_thread(args.burst as usize, p);
    let calibration = |sample: &[u8], per_thread: usize| -> Calibration {
        calibrate(&cpus, per_thread, |_| {
            job.run_inline(sample).expect("the sample message is valid");
        })
    };
    let before = sample.as_deref().map(|sample| {
        // Untimed warm-up: the first messages pay for page faults, cold
        // caches and clock ramp-up, which would inflate w before.
        calibration(sample, WARM_UP_MESSAGES_PER_THREAD);
        calibration(sample, per_thread)
    });

    let source: Box<dyn Source> = match args.source {
        SourceKind::Generate => {
            let generate = generate.expect("checked above");
            Box::new(BurstSource::new(args.burst, generate))
        }
        SourceKind::Stdin => Box::new(StdinSource::from_reader(
            std::io::BufReader::new(std::io::stdin()),
            args.max_record_bytes.0,
        )),
        SourceKind::Kafka => {
            let config = source_config(args, &cluster, &c.input_topic, &k.group);
            let assignment = config.assignment;
            let source_context =
                || format!("connecting the source to input topic {}", c.input_topic);
            let source = if args.exactly_once {
                let (source, eos_sink) = kafka_exactly_once(client, config, &sink_config())
                    .with_context(source_context)?;
                sink = Some(eos_sink);
                source
            } else {
                kafka_source(client, config).with_context(source_context)?
            };
            let how = match assignment {
                Assignment::Group(_) => format!("member of group {}", k.group),
                Assignment::Static(r) => format!(
                    "partitions p mod {} = {}, offsets under group {}",
                    r.count, r.index, k.group
                ),
            };
            eprintln!(
                "fila: reading {} ({how}) into {} on {}; stop with Ctrl-C",
                c.input_topic, c.output_topic, cluster.brokers
            );
            source
        }
    };
    let sink = sink.expect("made with the sink or the source");
    let mut segments = vec![Segment {
        source,
        sink,
        restorer: None,
    }];
    if attach_topics(args, sink_kind, &job, &cluster)? {
        for (i, topic) in job.repartitions().iter().enumerate() {
            let topic = repartition_topic(&k.group, topic);
            // Each repartition topic is read by a group of its own, named
            // after it: its partitions spread over the members as the
            // input's do.
            let config = SourceConfig {
                // The job's own topic, read by this group alone: what it
                // committed is deleted.
                purge_committed: true,
                // Every record the first segment wrote is due, whatever
                // `--offset-reset` says of the input: the group's first
                // run must not skip what was written before it joined,
                // and an offset below what was deleted has been read.
                offset_reset: OffsetReset::Earliest,
                ..source_config(args, &cluster, &topic, &topic)
            };
            let context = || format!("connecting the source to repartition topic {topic}");
            // Its input is the repartition topic: the offsets its
            // transactions commit, and its dead letters' origin, are
            // that topic's.
            let sink_config = SinkConfig {
                input_topic: topic.clone(),
                ..sink_config()
            };
            let (source, sink) = if args.exactly_once {
                kafka_exactly_once(client, config, &sink_config).with_context(context)?
            } else {
                let source = kafka_source(client, config).with_context(context)?;
                (
                    source,
                    kafka_sink(client, &sink_config).with_context(sink_context)?,
                )
            };
            segments.push(Segment {
                source,
                sink,
                restorer: None,
            });
            debug_assert_eq!(segments.len(), i + 2);
        }
        for (i, segment) in segments.iter_mut().enumerate() {
            if job.has_changelogs(i) {
                segment.restorer = Some(
                    changelog_reader(client, cluster.clone())
                        .context("connecting the restore reader")?,
                );
            }
        }
    }
    let summary = drive(
        rt,
        job.clone(),
        segments,
        counters,
        args.driver_config(),
        signals,
    )?;
    let ideal = before.zip(sample.as_deref()).map(|(before, sample)| {
        Ideal::from_calibrations(p, before, calibration(sample, per_thread))
    });

    let mut report = Report::new(
        summary.messages,
        summary.elapsed(),
        LatencyMs::from_micros(&summary.latencies_us),
        ideal.as_ref(),
    );
    report.workers = Some(rt.workers());
    report.window = Some(rt.window());
    if summary.dead_letters > 0 {
        eprintln!(
            "fila: {} bad record(s) skipped ({} from a panicking stage)",
            summary.dead_letters, summary.panicked
        );
    }
    let text = match args.report {
        ReportFormat::Json => report.to_json(),
        ReportFormat::Text => report.to_text().trim_end().to_owned(),
    };
    // Outputs own stdout when they are written there.
    if sink_kind == SinkKind::Stdout {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// For a job with keyed stages run from Kafka to Kafka on the rdkafka
/// client: makes each keyed stage's changelog topic ([`changelog_topic`])
/// and each repartition's topic ([`repartition_topic`]), with as many
/// partitions as the input, and attaches them to the job, which then runs
/// as its segments with durable state. Returns whether it did. Elsewhere
/// keyed state is kept in memory only, and the run says so.
fn attach_topics(
    args: &RunArgs,
    sink_kind: SinkKind,
    job: &Job,
    cluster: &Cluster,
) -> anyhow::Result<bool> {
    let stages = job.keyed_stages();
    if stages.is_empty() {
        return Ok(false);
    }
    let (k, client) = (&args.kafka, args.kafka.cluster.kafka_client);
    let on_kafka = args.source == SourceKind::Kafka && sink_kind == SinkKind::Kafka;
    if !on_kafka || client == ClientKind::Kafka {
        eprintln!(
            "fila: the state of keyed stage(s) {} is kept in memory only, and not repartitioned: \
             changelogs and repartition topics need Kafka as source and sink on the rdkafka \
             client",
            stages.join(", ")
        );
        return Ok(false);
    }
    let input = &k.cluster.input_topic;
    let partitions = TopicReader::end_offsets(client, cluster.clone(), input)
        .with_context(|| format!("looking up the partitions of input topic {input}"))?
        .len() as i32;
    let (repartitions, changelogs) = job
        .attach_topics(
            |stage| repartition_topic(&k.group, stage),
            |stage| changelog_topic(&k.group, stage),
        )
        .map_err(anyhow::Error::msg)?;
    for topic in &repartitions {
        create_repartition(client, cluster.clone(), topic, partitions)
            .with_context(|| format!("making repartition topic {topic}"))?;
    }
    for topic in &changelogs {
        create_changelog(client, cluster.clone(), topic, partitions)
            .with_context(|| format!("making changelog topic {topic}"))?;
    }
    if !repartitions.is_empty() {
        eprintln!(
            "fila: records are re-keyed through repartition topic(s) {}",
            repartitions.join(", ")
        );
    }
    eprintln!(
        "fila: keyed state is written to changelog topic(s) {}",
        changelogs.join(", ")
    );
    Ok(true)
}

/// The source configuration for reading `topic` as group `group`.
fn source_config(args: &RunArgs, cluster: &Cluster, topic: &str, group: &str) -> SourceConfig {
    let k = &args.kafka;
    // The kafka client has no group membership: it reads every partition
    // unless told which.
    let assignment = match (k.replica, k.cluster.kafka_client) {
        (Some(replica), _) => Assignment::Static(replica),
        (None, ClientKind::Kafka) => Assignment::Static(Replica::ALL),
        (None, ClientKind::Rdkafka) => Assignment::Group(k.group_protocol),
    };
    SourceConfig {
        cluster: cluster.clone(),
        topic: topic.to_owned(),
        group: group.to_owned(),
        assignment,
        offset_reset: k.offset_reset,
        retry_timeout: k.kafka_retry_timeout.0,
        purge_committed: false,
    }
}

/// The repartition topic before keyed stage `stage` of the job run by
/// consumer group `group`, `<group>-<stage>-repartition`, in Kafka's
/// characters as [`changelog_topic`]; also the group that reads it.
pub fn repartition_topic(group: &str, stage: &str) -> String {
    kafka_name(&format!("{group}-{stage}-repartition"))
}

/// The changelog topic of keyed stage `stage` of the job run by consumer
/// group `group`: `<group>-<stage>-changelog`, with every character Kafka
/// does not allow in a topic's name made `_`.
pub fn changelog_topic(group: &str, stage: &str) -> String {
    kafka_name(&format!("{group}-{stage}-changelog"))
}

fn kafka_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

/// What one segment of a job runs with: its source, its sink, and what
/// restores its keyed state.
struct Segment {
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    restorer: Option<Box<dyn ChangelogReader>>,
}

/// Runs a driver per segment of the job, on the one runtime, with
/// `signals` (SIGINT/SIGTERM, held since start-up) wired to a clean stop:
/// admission closes, what is in flight drains, flushes, and commits. A
/// segment that fails stops the others. The summary counts the records
/// read from the input and the outputs of the last segment, with its
/// latencies.
fn drive(
    rt: &Runtime,
    job: Arc<Job>,
    segments: Vec<Segment>,
    counters: &Counters,
    config: DriverConfig,
    mut signals: Signals,
) -> anyhow::Result<RunSummary> {
    let stop = AtomicBool::new(false);
    let signal_handle = signals.handle();
    std::thread::scope(|s| {
        s.spawn(|| {
            if signals.forever().next().is_some() {
                tracing::info!("signal received: draining and stopping");
                stop.store(true, Ordering::Relaxed);
                rt.close();
            }
        });
        let runs: Vec<_> = segments
            .into_iter()
            .enumerate()
            .map(|(i, segment)| {
                let (job, config, stop) = (job.clone(), config.clone(), &stop);
                std::thread::Builder::new()
                    .name(format!("fila-segment-{i}"))
                    .spawn_scoped(s, move || {
                        let Segment {
                            mut source,
                            sink,
                            restorer,
                        } = segment;
                        let mut driver = Driver::new()
                            .config(config)
                            .stop_on(stop)
                            .counters(counters)
                            .segment(i);
                        if let Some(restorer) = restorer {
                            driver = driver.restore_from(restorer);
                        }
                        let result = driver.run(rt, job, source.as_mut(), sink);
                        if result.is_err() {
                            // The other segments stop too.
                            stop.store(true, Ordering::Relaxed);
                            rt.close();
                        }
                        result
                    })
                    .expect("spawning a segment's driver")
            })
            .collect();
        let mut summaries = Vec::new();
        let mut failed = None;
        for run in runs {
            match run.join().expect("a segment's driver does not panic") {
                Ok(summary) => summaries.push(summary),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        signal_handle.close();
        if let Some(e) = failed {
            return Err(anyhow::Error::from(e));
        }
        let mut summaries = summaries.into_iter();
        let mut summary = summaries.next().expect("a job has a segment");
        for later in summaries {
            // Outputs come from the last segment only.
            summary.outputs = later.outputs;
            summary.latencies_us = later.latencies_us;
            summary.last_done = summary.last_done.max(later.last_done);
            summary.dead_letters += later.dead_letters;
            summary.panicked += later.panicked;
        }
        Ok(summary)
    })
}

impl JobSpec {
    /// A job with no generator and no calibration.
    pub fn new(job: Job) -> JobSpec {
        JobSpec {
            job,
            generate: None,
            calibration_sample: None,
        }
    }

    /// What `--source generate` hands the job: message `i` of the burst.
    pub fn generate(mut self, f: impl FnMut(u64) -> Vec<u8> + Send + 'static) -> JobSpec {
        self.generate = Some(Box::new(f));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::changelog_topic;

    #[test]
    fn a_changelog_topic_is_named_after_the_group_and_stage_in_kafkas_characters() {
        assert_eq!(changelog_topic("totals", "sum"), "totals-sum-changelog");
        assert_eq!(
            changelog_topic("my group", "per key/sum"),
            "my_group-per_key_sum-changelog"
        );
    }
}
