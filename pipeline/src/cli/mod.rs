//! The `fila` command line, as a library: argument types, dispatch,
//! logging and the panic hook. Behind the `cli` feature, so that a job
//! that does not want fila's command line does not build its
//! dependencies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fila_connectors::units::{Bytes, Span};
use fila_connectors::{
    ClientKind, ClientProperties, Cluster, ConnectorError, GroupProtocol, OffsetReset, ReplayBound,
    Replica, MAX_EXACTLY_ONCE_INTERVAL,
};
use fila_runtime::{
    Workers, DEFAULT_WINDOW_PER_WORKER, MAX_WINDOW, MAX_WINDOW_PER_WORKER, WINDOW_WORK_PER_WORKER,
};

use crate::driver::DriverConfig;
use crate::reference::{Stages, DEFAULT_BURST, DEFAULT_STAGES, MAX_STAGE};
/// The allocator the `fila` binary uses, for a binary of one's own:
/// `#[global_allocator] static A: fila_pipeline::cli::MiMalloc = fila_pipeline::cli::MiMalloc;`
pub use mimalloc::MiMalloc;

mod load;
mod run;

pub use run::{reference_spec, Generator, JobSpec};

#[derive(Debug, Parser)]
#[command(
    name = "fila",
    version,
    about = "A stream processor on a pinned work-stealing pool with a bounded admission window",
    after_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `--help` says of the environment.
const ENVIRONMENT: &str = "Environment:
  FILA_LOG            what to log, on stderr: warn (default), info, debug, or a filter like
                      info,librdkafka=debug
  FILA_LOG_FORMAT     text (default; colours only on a terminal) or json (one object per line)
  FILA_RDKAFKA_DEBUG  librdkafka's own debug contexts (cgrp,fetch or all), logged at debug level

Exit status: 0 on success, 2 for wrong flags, 1 for a runtime error (named on stderr).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reference job: on an embedded burst by default, on stdin,
    /// or as a long-running Kafka pipeline.
    Run(RunArgs),
    /// Play the load client: produce one burst to the input topic, read
    /// the output topic, and report throughput, latency, lost and duplicated
    /// ids.
    Load(LoadArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// One in-process burst of reference messages (needs nothing else).
    Generate,
    /// JSON lines on standard input.
    Stdin,
    /// The input topic on --brokers, until SIGINT or SIGTERM.
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// Drop the outputs; only the report is printed.
    None,
    /// JSON lines on standard output (the report then goes to stderr).
    Stdout,
    /// The output topic on --brokers (bad records to --dlq-topic if set).
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where records come from.
    #[arg(long, value_enum, default_value_t = SourceKind::Generate)]
    pub source: SourceKind,
    /// Where results go [default: none for generate, stdout for stdin,
    /// kafka for kafka].
    #[arg(long, value_enum)]
    pub sink: Option<SinkKind>,
    /// Messages in the generated burst.
    #[arg(long, default_value_t = DEFAULT_BURST, value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: u64,
    /// The five stage values of the generated message (fib of each).
    #[arg(long, default_value_t = Stages(DEFAULT_STAGES))]
    pub stages: Stages,
    /// The reference job's largest stage value: a record asking for more
    /// is dead-lettered as bad input.
    #[arg(long, default_value_t = MAX_STAGE)]
    pub max_stage: u32,
    /// Worker threads: `physical`, `logical`, or a count.
    #[arg(long, default_value_t = Workers::Logical)]
    pub workers: Workers,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Write each input partition's results in input order (a reorder
    /// buffer before the sink).
    #[arg(long)]
    pub ordered: bool,
    /// Of the outputs the job keyed (`sink_keyed`), write only each key's
    /// last in one batch of the sink (a tick's worth, up to a linger's);
    /// implies --ordered.
    /// For jobs whose keyed output is the key's current value (a count, a
    /// total), never for events.
    #[arg(long)]
    pub latest_per_key: bool,
    /// Records in flight at most.
    #[arg(long, value_parser = parse_window, help = window_help())]
    pub window: Option<usize>,
    /// With Kafka, exactly-once: each commit interval is one Kafka
    /// transaction holding the outputs, the dead letters and the input
    /// offsets, so nothing is written twice, even after a crash
    /// (rdkafka client; outputs are visible to read-committed readers at
    /// each commit).
    #[arg(long)]
    pub exactly_once: bool,
    /// With Kafka, how often offsets are committed (under --exactly-once,
    /// how often a transaction commits, at most every 5s; at once when the
    /// input goes quiet; and while records wait in the input, up to an
    /// eighth of the time the job needs to read them, at most 1s, when
    /// that is longer). A crash replays what was read since the last
    /// commit.
    #[arg(long, default_value_t = Span(DriverConfig::default().commit_interval))]
    pub commit_interval: Span,
    /// With Kafka, records read and not yet committed at most: reading
    /// waits at this many, so a crash replays at most this many. With
    /// stdin or generate, records read and not yet written at most.
    #[arg(long, default_value_t = DriverConfig::default().max_uncommitted.records, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_uncommitted: u64,
    /// With Kafka, bytes of input read and not yet committed at most
    /// (`64MiB`, `512KiB`): reading waits at this many.
    #[arg(long, default_value_t = Bytes(DriverConfig::default().max_uncommitted.bytes))]
    pub max_uncommitted_bytes: Bytes,
    /// The least time between two writes of the sink (`25ms`, `100ms`,
    /// `1s`): results that come within a tick of the last write gather
    /// until the tick is out, and are written and flushed together. With
    /// Kafka each flush is a produce request: a longer tick spares the
    /// broker, and an output may wait up to one tick longer. Under
    /// --exactly-once the sink gathers for a tick after each first result.
    #[arg(long, default_value_t = Span(DriverConfig::default().sink_tick))]
    pub sink_tick: Span,
    /// How long a batch still under 64KiB goes on gathering while
    /// records are in flight, from its first result
    /// (`100ms`, `1s`): a slow output stream is written in fewer, fuller
    /// requests, and waits up to this long [default: 4 ticks]
    #[arg(long)]
    pub sink_linger: Option<Span>,
    /// The largest record fila runs (`8MiB`, `1MiB`). A larger one, from
    /// any source, is dead-lettered unrun with its first 64KiB and the
    /// reason; stdin keeps no more of a line than this while reading it.
    #[arg(long, default_value_t = Bytes(DriverConfig::default().max_record_bytes))]
    pub max_record_bytes: Bytes,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve live metrics (Prometheus text format) at http://ADDR/metrics,
    /// and the health checks at /healthz and /readyz. Port 0 picks a free
    /// port; the address is printed on stderr.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// /healthz fails once records are in flight and the workers have
    /// finished none of them for this long (`120s`, `10m`): a stage that
    /// never returns. Set it above the slowest record's time.
    #[arg(long, default_value_t = Span(crate::health::DEFAULT_STUCK_AFTER))]
    pub stuck_after: Span,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

impl ClusterArgs {
    /// The cluster these flags name: --kafka-config, then each
    /// --kafka-property over it; the brokers from --brokers, else from the
    /// properties' bootstrap.servers, else 127.0.0.1:9092.
    pub fn cluster(&self) -> Result<Cluster, ConnectorError> {
        let mut properties = match &self.kafka_config {
            Some(path) => ClientProperties::from_file(path)?,
            None => ClientProperties::default(),
        };
        for (key, value) in &self.kafka_property {
            properties.set(key.clone(), value.clone());
        }
        let from_file = properties.take("bootstrap.servers");
        let brokers = self
            .brokers
            .clone()
            .or(from_file)
            .unwrap_or_else(|| DEFAULT_BROKERS.to_owned());
        Ok(Cluster::new(brokers, properties))
    }
}

/// Where fila looks for Kafka when nothing says otherwise.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

impl RunArgs {
    /// The driver's configuration these flags ask for.
    pub fn driver_config(&self) -> DriverConfig {
        DriverConfig {
            commit_interval: self.commit_interval.0,
            max_uncommitted: ReplayBound {
                records: self.max_uncommitted,
                bytes: self.max_uncommitted_bytes.0,
            },
            ordered: self.ordered,
            latest_per_key: self.latest_per_key,
            sink_tick: self.sink_tick.0,
            sink_linger: self.sink_linger.map(|l| l.0),
            max_record_bytes: self.max_record_bytes.0,
            ..DriverConfig::default()
        }
    }
}

fn window_help() -> String {
    format!(
        "Records in flight at most [default: sized by the runtime: {DEFAULT_WINDOW_PER_WORKER} × workers, \
         growing while records are light to hold about {} ms of work per worker, up to \
         {MAX_WINDOW_PER_WORKER} × workers]",
        WINDOW_WORK_PER_WORKER.as_millis()
    )
}

/// The flags that say which cluster and topics: the same for `run` and
/// `load`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Kafka bootstrap broker(s), `host:port[,host:port...]` [default:
    /// bootstrap.servers of --kafka-config, or 127.0.0.1:9092].
    #[arg(long)]
    pub brokers: Option<String>,
    /// A client properties file, in the Java clients' `key=value` format:
    /// security.protocol, sasl.*, ssl.*, compression.type, tuning. Applied
    /// to every client fila makes; see docs/kafka.md for the keys fila
    /// sets itself.
    #[arg(long, value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
    /// One client property, `KEY=VALUE`, over --kafka-config's (repeat it).
    #[arg(long, value_name = "KEY=VALUE", value_parser = ClientProperties::parse_pair)]
    pub kafka_property: Vec<(String, String)>,
    /// Kafka client.
    #[arg(long, value_enum, default_value_t = ClientKind::Rdkafka)]
    pub kafka_client: ClientKind,
    #[arg(long, default_value = "fila-input")]
    pub input_topic: String,
    #[arg(long, default_value = "fila-output")]
    pub output_topic: String,
}

#[derive(Debug, clap::Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Where records that cannot be processed go, with the reason. Without
    /// it they are logged and counted, and their offsets still commit.
    #[arg(long)]
    pub dlq_topic: Option<String>,
    /// Consumer group: with rdkafka, fila joins it and Kafka assigns the
    /// partitions; offsets are committed under it either way.
    #[arg(long, default_value = "fila")]
    pub group: String,
    /// Static assignment instead of group membership: read only the
    /// partitions p with p mod N = I. The kafka client always assigns
    /// statically [default there: 0/1, every partition].
    #[arg(long)]
    pub replica: Option<Replica>,
    /// Consumer-group protocol (rdkafka).
    #[arg(long, value_enum, default_value_t = GroupProtocol::Auto)]
    pub group_protocol: GroupProtocol,
    /// Where a partition of the input starts when the group has no
    /// committed offset for it, or the committed one is out of range
    /// (deleted by retention). A repartition topic always starts at its
    /// earliest.
    #[arg(long, value_enum, default_value_t = OffsetReset::Earliest)]
    pub offset_reset: OffsetReset,
    /// How long the broker may fail to answer (a restart, a stall) before
    /// fila gives up and exits 1: `500ms`, `60s`, `5m`; a bare number is
    /// seconds. Meanwhile fila retries with backoff and loses nothing.
    #[arg(long, default_value_t = Span(fila_connectors::DEFAULT_RETRY_TIMEOUT))]
    pub kafka_retry_timeout: Span,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Messages in the burst.
    #[arg(long, default_value_t = DEFAULT_BURST, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub burst: u64,
    /// The five stage values of each message.
    #[arg(long, default_value_t = Stages(DEFAULT_STAGES))]
    pub stages: Stages,
    /// Give up waiting for outputs after this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,
    /// Write `id,latency_ms` per message received to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write an SVG plot of latency against message id to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

fn parse_window(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(w) if (1..=MAX_WINDOW).contains(&w) => Ok(w),
        _ => Err(format!(
            "expected a window between 1 and {MAX_WINDOW}, got `{s}`"
        )),
    }
}

/// The `fila` command: parses the process's arguments, runs the
/// subcommand, and returns the exit status (2 for wrong flags, 1 for a
/// runtime error).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The generated burst is the only user of --stages.
    if let Command::Run(
        args @ RunArgs {
            source: SourceKind::Generate,
            ..
        },
    ) = &cli.command
    {
        if let Err(e) = crate::reference::check_stages(args.stages.0, args.max_stage) {
            <Cli as clap::CommandFactory>::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--stages: {e}"),
                )
                .exit();
        }
    }
    let cluster = match &cli.command {
        Command::Run(args) => {
            check_exactly_once::<Cli>(args);
            &args.kafka.cluster
        }
        Command::Load(args) => &args.cluster,
    };
    check_cluster::<Cli>(cluster);
    init();
    exit_status(dispatch(cli))
}

/// Exits 2, as for any wrong flag, if --exactly-once is asked of what
/// cannot do it.
fn check_exactly_once<C: clap::CommandFactory>(args: &RunArgs) {
    if !args.exactly_once {
        return;
    }
    let interval = args.commit_interval;
    let wrong = if args.source != SourceKind::Kafka {
        Some("--exactly-once needs --source kafka".to_owned())
    } else if args.sink.is_some_and(|s| s != SinkKind::Kafka) {
        Some("--exactly-once needs --sink kafka".to_owned())
    } else if args.kafka.cluster.kafka_client == ClientKind::Kafka {
        Some(
            "--exactly-once needs --kafka-client rdkafka: the kafka client speaks protocol v0, \
             which has no transactions"
                .to_owned(),
        )
    } else if interval.0 > MAX_EXACTLY_ONCE_INTERVAL {
        Some(format!(
            "--exactly-once takes a --commit-interval of at most {}, got {interval}: each \
             interval is one transaction, and the broker aborts a transaction left open for \
             twice that",
            Span(MAX_EXACTLY_ONCE_INTERVAL)
        ))
    } else {
        None
    };
    if let Some(wrong) = wrong {
        C::command()
            .error(clap::error::ErrorKind::ArgumentConflict, wrong)
            .exit();
    }
}

/// Exits 2, as for any wrong flag, if the client properties cannot be
/// read or set a key that is fila's own.
fn check_cluster<C: clap::CommandFactory>(args: &ClusterArgs) {
    let checked = args
        .cluster()
        .map_err(|e| e.to_string())
        .and_then(|cluster| cluster.properties.check_owned());
    if let Err(e) = checked {
        C::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit();
    }
}

/// fila's `run` command line for a job of one's own: the same flags,
/// sources, sinks, metrics, report and signals as `fila run`, with no
/// subcommand. `job` is built from the parsed flags.
///
/// ```no_run
/// use fila_pipeline::cli::{self, JobSpec};
/// use fila_pipeline::dataflow::Job;
///
/// fn main() -> std::process::ExitCode {
///     cli::run_main(|_flags| JobSpec::new(
///         Job::new("upper")
///             .decode(|input| Ok(String::from_utf8_lossy(input.payload()).to_uppercase()))
///             .sink(|line: &String| line.clone().into_bytes()),
///     ))
/// }
/// ```
pub fn run_main(job: impl FnOnce(&RunArgs) -> JobSpec) -> ExitCode {
    let cli = JobCli::parse();
    check_exactly_once::<JobCli>(&cli.run);
    check_cluster::<JobCli>(&cli.run.kafka.cluster);
    init();
    let spec = job(&cli.run);
    exit_status(run::run(cli.run, spec))
}

/// The command line of a job's own binary: `fila run`'s flags.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A fila job: fila run's flags, for this binary's job",
    after_help = ENVIRONMENT
)]
struct JobCli {
    #[command(flatten)]
    run: RunArgs,
}

fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fila: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to stderr and the one-line panic message.
fn init() {
    init_logging();
    install_panic_hook();
}

/// Logging to stderr: filtered by `FILA_LOG` (`warn` by default), as
/// plain text, with colours only on a terminal, or as one JSON object per
/// line with `FILA_LOG_FORMAT=json`, for a log collector.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FILA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let json = match std::env::var("FILA_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => {
            eprintln!("fila: FILA_LOG_FORMAT is text or json, not `{other}`; logging text");
            false
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A binary that set up its own subscriber keeps it.
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// Panics in stage code are caught by the runtime and the record is
/// dead-lettered; say so in one line instead of the default message and
/// backtrace hint.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let message = fila_runtime::panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("fila: panic on thread {name}{at}: {message}");
    }));
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let spec = reference_spec(&args);
            run::run(args, spec)
        }
        Command::Load(args) => load::load(args),
    }
}
