//! Changelog topics of keyed stages: made compacted, one partition per
//! input partition, and read back to restore a partition's state.
//!
//! A restore reads committed records only, from the start of the
//! partition to the log end the broker reports when the restore begins.
//! That end is asked for read uncommitted: the last stable offset, which a
//! read-committed client is told, stops short of it while a transaction
//! is open or its markers are still being written, and a restore that
//! stopped there would miss the transaction committed just before it. So
//! a restore waits for every transaction below that end to be decided,
//! and reads what committed.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{create_topic_with, ensure_topic, LOOKUP_TIMEOUT};
use super::config::{client_config, kafka_error, preflight};
use crate::kafka::{error, Cluster};
use crate::{ChangelogReader, ConnectorError, OnRecord};

/// How long a restore waits without its position moving before it fails:
/// an open transaction of another process holds a read-committed reader
/// back until that transaction is decided (the broker aborts it after the
/// producer's transaction timeout, a minute by default).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a long restore logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Makes `topic` a changelog of at least `partitions` partitions:
/// compacted, so it keeps each key's last value. Succeeds if it exists
/// with enough partitions; fails if it has fewer, since each input
/// partition writes its own.
pub(crate) fn create_changelog(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    let brokers = cluster.brokers.as_str();
    let admin = create_topic_with(cluster, topic, partitions, &[("cleanup.policy", "compact")])?;
    let had = ensure_topic(admin.inner(), brokers, topic)?.len() as i32;
    if had < partitions {
        return Err(error(
            brokers,
            format!(
                "changelog topic {topic} has {had} partition(s), fewer than the input's \
                 {partitions}: delete it (its state is lost) or add partitions to it"
            ),
        ));
    }
    Ok(())
}

/// Reads changelog partitions back: two clients of no group, one reading
/// committed records, one asking for the log end read uncommitted.
pub(crate) struct RdChangelogReader {
    brokers: String,
    committed: BaseConsumer,
    uncommitted: BaseConsumer,
}

impl RdChangelogReader {
    pub(crate) fn connect(cluster: &Cluster) -> Result<RdChangelogReader, ConnectorError> {
        let brokers = cluster.brokers.as_str();
        preflight(cluster)?;
        let consumer = |isolation: &str| -> Result<BaseConsumer, ConnectorError> {
            client_config(cluster)?
                .set("group.id", "fila-restore")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("isolation.level", isolation)
                .create()
                .map_err(|e| kafka_error(brokers, "creating the restore consumer", e))
        };
        Ok(RdChangelogReader {
            brokers: brokers.to_owned(),
            committed: consumer("read_committed")?,
            uncommitted: consumer("read_uncommitted")?,
        })
    }

    /// Where the committed reader will read next in `topic`'s
    /// `partition`: past the transaction markers it skipped, too.
    fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        let list = self.committed.position().ok()?;
        match list.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

impl ChangelogReader for RdChangelogReader {
    fn read(
        &mut self,
        topic: &str,
        partition: i32,
        f: &mut OnRecord<'_>,
    ) -> Result<u64, ConnectorError> {
        let brokers = self.brokers.clone();
        let (start, end) = self
            .uncommitted
            .fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)
            .map_err(|e| {
                kafka_error(
                    &brokers,
                    &format!("asking for the end of changelog {topic} [{partition}]"),
                    e,
                )
            })?;
        if end <= start {
            return Ok(0);
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(|e| kafka_error(&brokers, "assigning a changelog partition", e))?;
        self.committed
            .assign(&assignment)
            .map_err(|e| kafka_error(&brokers, "assigning a changelog partition", e))?;
        let began = Instant::now();
        let (mut read, mut moved, mut logged) = (0u64, began, began);
        let mut last = None;
        let result = loop {
            let at = self.position(topic, partition);
            if at.is_some_and(|at| at >= end) {
                break Ok(read);
            }
            if at != last {
                (last, moved) = (at, Instant::now());
            } else if moved.elapsed() > STALL_TIMEOUT {
                break Err(error(
                    &brokers,
                    format!(
                        "restoring from changelog {topic} [{partition}]: stuck at offset {} \
                         of {end} for {STALL_TIMEOUT:?} (a transaction of another process \
                         still open?)",
                        at.map_or("none".into(), |a| a.to_string())
                    ),
                ));
            }
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                tracing::info!(
                    topic, partition, read, at = ?at, end,
                    "restoring state from its changelog"
                );
            }
            match self.committed.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    read += 1;
                    if let Some(key) = m.key() {
                        f(key, m.payload());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    break Err(kafka_error(
                        &brokers,
                        &format!("reading changelog {topic} [{partition}]"),
                        e,
                    ))
                }
            }
        };
        let _ = self.committed.unassign();
        if let Ok(read) = result {
            tracing::info!(
                topic, partition, read, took = ?began.elapsed(),
                "state restored from its changelog"
            );
        }
        result
    }
}
