//! Command-line interface: argument types and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use fila_connectors::Replica;
use fila_runtime::{Workers, MAX_WINDOW};

mod load;
mod run;

#[derive(Debug, Parser)]
#[command(
    name = "fila",
    version,
    about = "A stream processor on a pinned work-stealing pool with a bounded admission window"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: u64,
    /// The five stage values of the generated message (fib of each).
    #[arg(long, default_value = "10,20,30,20,10", value_parser = fila_pipeline::reference::parse_stages)]
    pub stages: [u32; 5],
    /// Worker threads: `physical`, `logical`, or a count.
    #[arg(long, default_value = "logical")]
    pub workers: Workers,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Records in flight at most; with Kafka, also records read and not yet
    /// committed, so a crash replays at most this many [default: 16 × workers].
    #[arg(long, value_parser = parse_window)]
    pub window: Option<usize>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve live metrics (Prometheus text format) at http://ADDR/metrics.
    /// Port 0 picks a free port; the address is printed on stderr.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

#[derive(Debug, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap broker(s), `host:port[,host:port...]` (a 3.x broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "fila-input")]
    pub input_topic: String,
    #[arg(long, default_value = "fila-output")]
    pub output_topic: String,
    /// Where records that cannot be processed go, with the reason. Without
    /// it they are logged and counted, and their offsets still commit.
    #[arg(long)]
    pub dlq_topic: Option<String>,
    /// Consumer group under which offsets are committed.
    #[arg(long, default_value = "fila")]
    pub group: String,
    /// Read only the partitions p with p mod N = I.
    #[arg(long, default_value = "0/1")]
    pub replica: Replica,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Kafka bootstrap broker(s), `host:port[,host:port...]`.
    #[arg(long)]
    pub brokers: String,
    #[arg(long, default_value = "fila-input")]
    pub input_topic: String,
    #[arg(long, default_value = "fila-output")]
    pub output_topic: String,
    /// Messages in the burst.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub burst: u64,
    /// The five stage values of each message.
    #[arg(long, default_value = "10,20,30,20,10", value_parser = fila_pipeline::reference::parse_stages)]
    pub stages: [u32; 5],
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

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Load(args) => load::load(args),
    }
}
