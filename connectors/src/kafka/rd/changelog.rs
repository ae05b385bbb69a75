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

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{create_topic_with, ensure_topic, LOOKUP_TIMEOUT};
use super::config::{client_config, kafka_error, preflight};
use super::produce::max_record_bytes;
use crate::kafka::{error, Cluster};
use crate::{ChangelogReader, ConnectorError, Restore};

/// How long a restore waits without its position moving before it fails:
/// an open transaction of another process holds a read-committed reader
/// back until that transaction is decided (the broker aborts it after the
/// producer's transaction timeout, a minute by default).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Records handed from a restore's reading thread to its applying one at
/// a time.
const BATCH: usize = 1024;

/// Records on their way from a restore's reading thread to its applying
/// one: their keys and values copied end to end into one buffer, so that
/// a batch costs two allocations, not two per record.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Per record, where its key ends in `bytes` and where its value ends
    /// (`None`: a tombstone); each starts where the one before ends.
    ends: Vec<(usize, Option<usize>)>,
}

impl Batch {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        let value_end = value.map(|v| {
            self.bytes.extend_from_slice(v);
            self.bytes.len()
        });
        self.ends.push((key_end, value_end));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Calls `f` with each record's key and value, in the order pushed.
    fn apply(&self, f: &mut dyn Restore) {
        let mut start = 0;
        for &(key_end, value_end) in &self.ends {
            let key = &self.bytes[start..key_end];
            start = key_end;
            let value = value_end.map(|end| {
                let value = &self.bytes[start..end];
                start = end;
                value
            });
            f.record(key, value);
        }
    }
}

/// How long a restore retries asking where its changelog partition ends.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a long restore logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Makes `topic` a changelog of at least `partitions` partitions:
/// compacted, so it keeps each key's last value, and replicated as the
/// broker's `default.replication.factor` says. Like a repartition topic, it
/// takes any record the producer sends (`max.message.bytes`): a state
/// record or a repartitioned one the topic refused would fail the run at
/// every restart. Succeeds if it exists with
/// enough partitions; fails if it has fewer, since each input partition
/// writes its own.
pub(crate) fn create_changelog(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    let brokers = cluster.brokers.as_str();
    let admin = create_own_topic(cluster, topic, partitions, &[("cleanup.policy", "compact")])?;
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

/// Makes `topic` a repartition topic of `partitions` partitions, replicated
/// as the broker's `default.replication.factor` says, unless it exists.
pub(crate) fn create_repartition(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    create_own_topic(cluster, topic, partitions, &[]).map(drop)
}

/// Creates one of fila's own topics with `config`, replicated as the
/// broker's `default.replication.factor` says, and taking any record the
/// producer sends. A cluster whose policy refuses that limit (a managed
/// one may) gets the topic with its default limit, and a warning.
fn create_own_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<AdminClient<DefaultClientContext>, ConnectorError> {
    let limit = max_record_bytes(cluster)?.to_string();
    let mut with_limit = config.to_vec();
    with_limit.push(("max.message.bytes", &limit));
    create_topic_with(cluster, topic, partitions, -1, &with_limit).or_else(|e| {
        tracing::warn!(
            topic,
            "creating it with max.message.bytes {limit} failed ({e}); creating it with the \
             cluster's default limit: a record over that would stop the run"
        );
        create_topic_with(cluster, topic, partitions, -1, config)
    })
}

/// Reads changelog partitions back: two clients that join no group (the
/// group id librdkafka wants for an assignment is never used), one
/// reading committed records, one asking for the log end read
/// uncommitted.
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
                .set("enable.partition.eof", "true")
                // A restore reads a partition from its start as fast as
                // it can: larger fetches than a consumer's default, and a
                // short pause when its queue is full (librdkafka's default
                // pause, up to a second, dominates a restore of a million
                // records). The queue stays bounded by librdkafka's
                // defaults, 100,000 records or 64 MiB.
                .set("max.partition.fetch.bytes", "16777216")
                .set("fetch.max.bytes", "67108864")
                .set("fetch.queue.backoff.ms", "10")
                .create()
                .map_err(|e| kafka_error(brokers, "creating the restore consumer", e))
        };
        Ok(RdChangelogReader {
            brokers: brokers.to_owned(),
            committed: consumer("read_committed")?,
            uncommitted: consumer("read_uncommitted")?,
        })
    }

    /// The first offset and the log end of `topic`'s `partition`, asked
    /// read uncommitted. A topic just made, or a broker just started or
    /// moving its leaders, may not answer at once: failures are retried
    /// for up to [`WATERMARKS_TIMEOUT`].
    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), ConnectorError> {
        let deadline = Instant::now() + WATERMARKS_TIMEOUT;
        loop {
            match self
                .uncommitted
                .fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)
            {
                Ok(watermarks) => return Ok(watermarks),
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(
                        topic,
                        partition,
                        "asking for a changelog's end failed ({e}); retrying"
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("asking for the end of changelog {topic} [{partition}]"),
                        e,
                    ))
                }
            }
        }
    }

    /// Reads `topic`'s `partition`, assigned to the committed reader, up to
    /// `end`, and hands the records on to `tx` in batches. Returns how
    /// many it read.
    fn fetch(
        &self,
        topic: &str,
        partition: i32,
        end: i64,
        brokers: &str,
        tx: std::sync::mpsc::SyncSender<Batch>,
    ) -> Result<u64, ConnectorError> {
        let began = Instant::now();
        let (mut read, mut moved, mut logged) = (0u64, began, began);
        let (mut last, mut last_read, mut failure) = (None, 0, None);
        let mut batch = Batch::default();
        // Done once the records read reach the end, or, when the log ends
        // in transaction markers (which no record shows), once the
        // reader's position passes them: it is looked at only when
        // nothing more arrives.
        let mut reached = false;
        // The clock is read once a batch, not once a record: the progress
        // log and the stall bound need no finer time.
        let mut hand_on = |batch: &mut Batch, read: u64| {
            if batch.len() > 0 {
                // The applying side went away only if it panicked.
                let next = Batch {
                    bytes: Vec::with_capacity(batch.bytes.len()),
                    ends: Vec::with_capacity(BATCH),
                };
                let _ = tx.send(std::mem::replace(batch, next));
            }
            let now = Instant::now();
            if now.duration_since(logged) >= PROGRESS_EVERY {
                logged = now;
                tracing::info!(
                    topic,
                    partition,
                    read,
                    end,
                    "restoring state from its changelog"
                );
            }
            now
        };
        loop {
            if reached {
                hand_on(&mut batch, read);
                return Ok(read);
            }
            match self.committed.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    read += 1;
                    if let Some(key) = m.key() {
                        batch.push(key, m.payload());
                    }
                    reached = m.offset() + 1 >= end;
                    if batch.len() >= BATCH {
                        moved = hand_on(&mut batch, read);
                    }
                    continue;
                }
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    // librdkafka retries what it can (a leader moving, a
                    // broker restarting) and reports it meanwhile: the
                    // restore waits, up to the stall bound, and says why.
                    tracing::warn!(topic, partition, "reading a changelog: {e}; retrying");
                    failure = Some(e.to_string());
                }
            }
            let now = hand_on(&mut batch, read);
            let at = self.position(topic, partition);
            reached = at.is_some_and(|at| at >= end);
            if at != last || read != last_read {
                (last, last_read, moved) = (at, read, now);
            } else if !reached && moved.elapsed() > STALL_TIMEOUT {
                return Err(error(
                    brokers,
                    format!(
                        "restoring from changelog {topic} [{partition}]: stuck at offset {} \
                         of {end} for {STALL_TIMEOUT:?} ({})",
                        at.map_or("none".into(), |a| a.to_string()),
                        failure
                            .as_deref()
                            .unwrap_or("a transaction of another process still open?")
                    ),
                ));
            }
        }
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
        f: &mut dyn Restore,
    ) -> Result<u64, ConnectorError> {
        let brokers = self.brokers.clone();
        let (start, end) = self.watermarks(topic, partition)?;
        if end <= start {
            return Ok(0);
        }
        f.expect((end - start) as u64);
        // The committed reader asks for the topic's metadata before it is
        // assigned the partition: assigned a partition of a topic it has
        // not looked up, it may wait about a second before its first
        // fetch. A failure here only loses that head start.
        let _ = self.committed.fetch_metadata(Some(topic), LOOKUP_TIMEOUT);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| kafka_error(&brokers, "assigning a changelog partition", e))?;
        self.committed
            .assign(&assignment)
            .map_err(|e| kafka_error(&brokers, "assigning a changelog partition", e))?;
        let began = Instant::now();
        // This thread applies what a thread of the restore's own reads,
        // so that fetching and decoding overlap.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(8);
        let result = std::thread::scope(|s| {
            let reader = std::thread::Builder::new()
                .name("fila-restore".into())
                .spawn_scoped(s, || self.fetch(topic, partition, end, &brokers, tx))
                .expect("starting the restore's reader");
            for batch in rx {
                batch.apply(f);
            }
            reader.join().expect("the restore's reader does not panic")
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        expected: Option<u64>,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    }

    impl Restore for Seen {
        fn expect(&mut self, records: u64) {
            self.expected = Some(records);
        }

        fn record(&mut self, key: &[u8], value: Option<&[u8]>) {
            self.records.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        }
    }

    #[test]
    fn a_batch_hands_on_each_key_and_value_as_pushed() {
        let records: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"a", Some(b"1")),
            (b"bb", None),
            (b"", Some(b"")),
            (b"c", Some(b"{\"total\":3}")),
            (b"", None),
            (b"dd", Some(b"4")),
        ];
        let mut batch = Batch::default();
        for &(key, value) in &records {
            batch.push(key, value);
        }
        assert_eq!(batch.len(), records.len());
        let mut seen = Seen::default();
        batch.apply(&mut seen);
        let want: Vec<_> = records
            .iter()
            .map(|&(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(seen.records, want);
        assert_eq!(seen.expected, None);
    }
}
