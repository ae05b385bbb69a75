//! The load client's and the tests' reader and writer: a topic's
//! partitions read from given offsets outside any group, records written
//! and waited for, and a topic's end offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{ensure_topic, LOOKUP_TIMEOUT};
use super::config::{
    client_config, fatal, kafka_error, leader_moving, preflight, Defaults, Logging,
};
use super::produce::{producer, Writer};
use super::source::envelope_of;
use crate::kafka::{interleave, Cluster, Fetched, DEFAULT_RETRY_TIMEOUT};
use crate::ConnectorError;

/// How often the load client's and the tests' producer reports its
/// statistics: how it learns that it has its producer id.
const READY_STATS: Duration = Duration::from_millis(100);

/// How long the load client's and the tests' writer retries a record
/// before it reports the failure: they are tools, and should fail fast.
const TOOL_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes values to topics for the load client and tests. Records without
/// a key go to the topic's partitions in turn, so a burst is spread evenly
/// (librdkafka's default would put everything sent within a few
/// milliseconds on one partition).
pub(crate) struct TopicWriter {
    writer: Writer,
    partitions: BTreeMap<String, i32>,
    turn: u64,
}

impl TopicWriter {
    pub fn connect(cluster: &Cluster, topics: &[&str]) -> Result<TopicWriter, ConnectorError> {
        let brokers = cluster.brokers.as_str();
        // A burst is sent as fast as possible: a few ms of linger fills
        // batches without delaying the records noticeably.
        let producer = producer(cluster, 5, TOOL_RETRY_TIMEOUT, Some(READY_STATS))?;
        let mut partitions = BTreeMap::new();
        for &topic in topics {
            let ids = ensure_topic(producer.client(), brokers, topic)?;
            partitions.insert(topic.to_owned(), ids.len() as i32);
        }
        // The writer's poll thread serves the statistics that say when the
        // producer is ready.
        let writer = Writer::new(producer, brokers, TOOL_RETRY_TIMEOUT);
        // An idempotent producer sends nothing before it has its producer
        // id, and when it asks before its first connection is up it asks
        // again only after a backoff: wait for it here, so that the first
        // records sent are not held back. (It sends anyway if the wait
        // runs out.)
        if !writer.producer.context().wait_ready(LOOKUP_TIMEOUT) {
            tracing::warn!(
                brokers,
                "the producer has no producer id yet; sending anyway"
            );
        }
        Ok(TopicWriter {
            writer,
            partitions,
            turn: 0,
        })
    }

    pub fn send_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>, &'a [u8])>,
    ) -> Result<(), ConnectorError> {
        self.send(records)?;
        self.flush()
    }

    /// Hands every record to the producer, without waiting for any
    /// acknowledgement; [`flush`](Self::flush) waits for them.
    pub fn send<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>, &'a [u8])>,
    ) -> Result<(), ConnectorError> {
        for (topic, key, value) in records {
            let partition = match (key, self.partitions.get(topic)) {
                (None, Some(&n)) if n > 0 => {
                    self.turn += 1;
                    Some((self.turn % n as u64) as i32)
                }
                _ => None,
            };
            self.writer.send(topic, key, value, None, partition)?;
        }
        Ok(())
    }

    /// Returns once everything sent is acknowledged, or the first failure.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        self.writer.flush()
    }
}

struct ReaderContext {
    logging: Logging,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logging.error(error, reason)
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads given partitions from given offsets, outside any group.
pub(crate) struct TopicReader {
    consumer: BaseConsumer<ReaderContext>,
    brokers: String,
    topic: String,
    partitions: usize,
    /// Records read by `wait_caught_up`, for the next `fetch`.
    early: Vec<Fetched>,
}

fn fetched_of(m: &BorrowedMessage<'_>) -> Fetched {
    let e = envelope_of(m);
    Fetched {
        position: e.position,
        key: e.key,
        payload: e.payload,
        headers: e.headers,
    }
}

fn reader(cluster: &Cluster) -> Result<BaseConsumer<ReaderContext>, ConnectorError> {
    let brokers = cluster.brokers.as_str();
    preflight(cluster)?;
    // librdkafka wants a group even for a plain assignment; this one never
    // joins, and commits nothing.
    let group = format!("fila-reader-{}", std::process::id());
    client_config(cluster)?
        .default_to("fetch.wait.max.ms", "100")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // Committed records only, as a reader of fila's output would
        // read under exactly-once (and librdkafka's default, made sure).
        .set("isolation.level", "read_committed")
        // Says when a partition has been read to its end: how
        // `wait_caught_up` knows the reader is fetching.
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext {
            logging: Logging::new(brokers, DEFAULT_RETRY_TIMEOUT),
        })
        .map_err(|e| kafka_error(brokers, "creating the consumer", e))
}

impl TopicReader {
    pub fn new(
        cluster: &Cluster,
        topic: &str,
        start: BTreeMap<i32, i64>,
    ) -> Result<TopicReader, ConnectorError> {
        let brokers = cluster.brokers.as_str();
        let consumer = reader(cluster)?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in start {
            tpl.add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(|e| kafka_error(brokers, "assigning partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error(brokers, &format!("reading {topic}"), e))?;
        Ok(TopicReader {
            consumer,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions: tpl.count(),
            early: Vec::new(),
        })
    }

    /// Waits until every partition has been read to its end once, or
    /// `timeout` passes, keeping what arrived meanwhile for `fetch`. A
    /// consumer just assigned looks up its partitions' leaders and checks
    /// its offsets before it fetches anything, which takes a while.
    pub fn wait_caught_up(&mut self, timeout: Duration) -> Result<bool, ConnectorError> {
        let deadline = Instant::now() + timeout;
        let mut at_end = std::collections::BTreeSet::new();
        while at_end.len() < self.partitions && Instant::now() < deadline {
            let Some(result) = self.consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            match result {
                Ok(m) => self.early.push(fetched_of(&m)),
                Err(KafkaError::PartitionEOF(p)) => {
                    at_end.insert(p);
                }
                Err(e) if fatal(&e) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("reading {}", self.topic),
                        e,
                    ))
                }
                Err(e) => self.consumer.context().logging.error(e, "reading a topic"),
            }
        }
        Ok(at_end.len() >= self.partitions)
    }

    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        let mut per_partition: BTreeMap<i32, Vec<Fetched>> = BTreeMap::new();
        for f in self.early.drain(..) {
            per_partition
                .entry(f.position.partition)
                .or_default()
                .push(f);
        }
        let mut wait = Duration::from_millis(100);
        let mut count = 0;
        while count < 10_000 {
            let Some(result) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match result {
                Ok(m) => {
                    count += 1;
                    let f = fetched_of(&m);
                    per_partition
                        .entry(f.position.partition)
                        .or_default()
                        .push(f);
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) if fatal(&e) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("reading {}", self.topic),
                        e,
                    ))
                }
                Err(e) => self.consumer.context().logging.error(e, "reading a topic"),
            }
        }
        Ok(interleave(per_partition.into_values().collect()))
    }
}

/// The end offset of every partition of `topic`, creating it if needed.
pub(crate) fn end_offsets(
    cluster: &Cluster,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    Ok(watermarks(cluster, topic)?
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect())
}

/// The start offset (the first record kept) of every partition of
/// `topic`, creating it if needed.
pub(crate) fn start_offsets(
    cluster: &Cluster,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    Ok(watermarks(cluster, topic)?
        .into_iter()
        .map(|(p, (low, _))| (p, low))
        .collect())
}

/// The start and end offsets of every partition of `topic`, creating it
/// if needed.
fn watermarks(cluster: &Cluster, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, ConnectorError> {
    let brokers = cluster.brokers.as_str();
    let producer = producer(cluster, 0, DEFAULT_RETRY_TIMEOUT, None)?;
    let partitions = ensure_topic(producer.client(), brokers, topic)?;
    let mut out = BTreeMap::new();
    // A topic just created may not have its leaders settled yet, and a
    // broker just back from a stall may not lead its partitions again yet:
    // it answers NotLeaderForPartition, or the client's metadata knows no
    // leader, for a moment. Retry in short attempts, bounded.
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    for p in partitions {
        let range = loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), Duration::from_secs(2));
            match producer.client().fetch_watermarks(topic, p, attempt) {
                Ok(range) => break range,
                Err(e) if Instant::now() < deadline && leader_moving(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(kafka_error(
                        brokers,
                        &format!("listing offsets of {topic}"),
                        e,
                    ))
                }
            }
        };
        out.insert(p, range);
    }
    Ok(out)
}
