//! fila-pipeline: the dataflow API over `fila-runtime`, the reference
//! Fibonacci job, the driver that connects a source and a sink to the
//! runtime, and the reports of the `fila` command.

#[cfg(feature = "cli")]
pub mod cli;
pub mod counters;
pub mod dataflow;
pub mod driver;
pub mod health;
pub mod metrics;
mod order;
mod outlet;
pub mod reference;
pub mod report;
pub mod state;
