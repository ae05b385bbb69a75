//! Command-line interface: argument types and dispatch.

use clap::{Parser, Subcommand, ValueEnum};
use fila_runtime::{Workers, MAX_WINDOW};

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
    /// Run the reference job: on an embedded burst by default, or on stdin.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// One in-process burst of reference messages (needs nothing else).
    Generate,
    /// JSON lines on standard input.
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// Drop the outputs; only the report is printed.
    None,
    /// JSON lines on standard output (the report then goes to stderr).
    Stdout,
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
    /// Where results go [default: none for generate, stdout for stdin].
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
    /// Records in flight at most [default: 2 × workers].
    #[arg(long, value_parser = parse_window)]
    pub window: Option<usize>,
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
    }
}
