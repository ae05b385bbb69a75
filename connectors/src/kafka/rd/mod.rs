//! Kafka source and sink on librdkafka (the `rdkafka` crate), through its
//! synchronous API only: a `BaseConsumer` polled by the source's thread,
//! and a `BaseProducer` whose delivery callbacks run on a poll thread of
//! the writer's.
//!
//! One file per concern: the client's configuration, logging and error
//! classification ([`config`]), the source and its group membership
//! ([`source`]), its committer ([`commit`]), the producer the sink and the
//! tools share ([`produce`]), the sink ([`sink`]), exactly-once
//! transactions ([`transaction`]), the load client's and the tests' reader
//! and writer ([`tools`]), admin calls ([`admin`]), keyed stages'
//! changelogs ([`changelog`]), and deleting what a repartition topic's
//! readers committed ([`purge`]).

use std::sync::{Mutex, MutexGuard};

mod admin;
mod changelog;
mod commit;
mod config;
mod produce;
mod purge;
mod sink;
mod source;
mod tools;
mod transaction;

pub(super) use admin::{commit_group_offsets, create_topic};
pub(super) use changelog::{create_changelog, create_repartition, RdChangelogReader};
pub(super) use sink::RdSink;
pub(super) use source::RdSource;

use std::sync::Arc;

use crate::kafka::{Pipe, SinkConfig, SourceConfig};
use crate::ConnectorError;

/// A source and a sink that run exactly-once: the sink's transactions
/// carry the source's offsets, and a rebalance of the source aborts the
/// sink's open transaction.
pub(super) fn exactly_once(
    source: SourceConfig,
    sink: &SinkConfig,
) -> Result<Pipe, ConnectorError> {
    let link = Arc::new(transaction::Link::default());
    let source = RdSource::connect_with(source, Some(link.clone()))?;
    let sink = RdSink::transactional(sink, &source, link)?;
    Ok((Box::new(source), Box::new(sink)))
}
pub use source::DRAIN_TIMEOUT;
pub(super) use tools::{end_offsets, start_offsets, TopicReader, TopicWriter};
pub use transaction::MAX_EXACTLY_ONCE_INTERVAL;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent at every step, so a panic
    // elsewhere while holding the lock leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
