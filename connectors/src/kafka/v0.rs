//! Kafka source and sink on the `kafka` crate (protocol v0, so Kafka 3.x
//! brokers only; 4.x removed v0 of Produce, Fetch and ListOffsets).
//!
//! Partitions are assigned explicitly, never through a consumer group's
//! membership protocol (the crate has none): all of them, or with a
//! [`Replica`] `i/n`, the partitions p with p mod n = i. Offsets are stored
//! in Kafka under the group, and only ever committed up to what `Acks`
//! allows. Protocol v0 has no record headers and no timestamps, so keys
//! are not carried through and a dead letter is a JSON envelope.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use kafka::client::{
    CommitOffset, FetchOffset, FetchPartition, GroupOffsetStorage, KafkaClient, RequiredAcks,
};
use kafka::error::{Error as KafkaError, KafkaCode};
use kafka::producer::{Producer, Record};
use serde::Serialize;

use super::{error, hosts, interleave, BrokerVersions, Fetched, KafkaConfig, Replica};
use crate::{Acks, Committer, ConnectorError, Envelope, Polled, Position, Sink, Source};

/// Turns a client error into one a user can act on.
fn explain(brokers: &str, what: &str, e: KafkaError) -> ConnectorError {
    use std::io::ErrorKind::*;
    let message = match &e {
        KafkaError::NoHostReachable => {
            format!("{what}: cannot connect to any broker (is Kafka running there?)")
        }
        KafkaError::Io(io)
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) =>
        {
            format!("{what}: the broker closed the connection ({io})")
        }
        KafkaError::UnexpectedEOF => format!("{what}: the broker's answer was cut short"),
        other => format!("{what}: {other}"),
    };
    error(brokers, message)
}

/// A client connected to `brokers`, with metadata loaded. A Kafka 4.x
/// broker gets a clear error here, before any v0 request it would drop.
pub fn connect(brokers: &str) -> Result<KafkaClient, ConnectorError> {
    let hosts = hosts(brokers)?;
    let versions = BrokerVersions::probe(brokers)?;
    if !versions.accepts_v0_fetch() {
        return Err(error(
            brokers,
            format!(
                "the broker at {} is Kafka 4.x or later, which no longer accepts the \
                 protocol v0 requests of the kafka client (KIP-896); use \
                 --kafka-client rdkafka (the default)",
                versions.address
            ),
        ));
    }
    let mut client = KafkaClient::new(hosts);
    client.set_client_id("fila".into());
    client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
    client.set_retry_max_attempts(3);
    client.set_fetch_min_bytes(1);
    client
        .set_fetch_max_wait_time(Duration::from_millis(100))
        .expect("100 ms is a valid fetch wait");
    client.set_fetch_max_bytes_per_partition(1 << 20);
    client
        .load_metadata_all()
        .map_err(|e| explain(brokers, "loading metadata", e))?;
    Ok(client)
}

/// The partitions of `topic`, creating the topic (with the broker's default
/// partition count) if it does not exist yet.
pub fn ensure_topic(
    client: &mut KafkaClient,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>, ConnectorError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // A metadata request for a missing topic asks the broker to create it.
        client
            .load_metadata(&[topic])
            .map_err(|e| explain(brokers, &format!("looking up topic {topic}"), e))?;
        if let Some(partitions) = client.topics().partitions(topic) {
            let mut ids = partitions.available_ids();
            if !ids.is_empty() && ids.len() == partitions.len() {
                ids.sort_unstable();
                return Ok(ids);
            }
        }
        if Instant::now() > deadline {
            return Err(error(
                brokers,
                format!("topic {topic} does not exist and was not created (is auto.create.topics.enable off?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads assigned partitions of a topic from given offsets.
pub struct TopicReader {
    client: KafkaClient,
    brokers: String,
    topic: String,
    next: BTreeMap<i32, i64>,
}

impl TopicReader {
    /// Reads `topic` on `brokers`, partition p from `start[p]`.
    pub fn new(
        brokers: &str,
        topic: &str,
        start: BTreeMap<i32, i64>,
    ) -> Result<TopicReader, ConnectorError> {
        Ok(TopicReader {
            client: connect(brokers)?,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            next: start,
        })
    }

    /// The current end (next offset to be written) of every partition.
    pub fn end_offsets(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        let mut client = connect(brokers)?;
        ensure_topic(&mut client, brokers, topic)?;
        offsets(&mut client, brokers, topic, FetchOffset::Latest)
    }

    /// One fetch: waits up to about 100 ms on the broker for data.
    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        let topic = self.topic.as_str();
        let requests = self
            .next
            .iter()
            .map(|(&p, &offset)| FetchPartition::new(topic, p, offset).with_max_bytes(1 << 20));
        let responses = self
            .client
            .fetch_messages(requests)
            .map_err(|e| explain(&self.brokers, &format!("fetching from {topic}"), e))?;
        let mut per_partition: Vec<Vec<Fetched>> = Vec::new();
        let mut reset = Vec::new();
        for response in &responses {
            for t in response.topics() {
                for p in t.partitions() {
                    let partition = p.partition();
                    let Some(next) = self.next.get_mut(&partition) else {
                        continue;
                    };
                    match p.data() {
                        Ok(data) => {
                            let mut out = Vec::new();
                            for m in data.messages() {
                                // A fetch may start before the offset asked for.
                                if m.offset < *next {
                                    continue;
                                }
                                *next = m.offset + 1;
                                out.push(Fetched {
                                    position: Position {
                                        partition,
                                        offset: m.offset,
                                    },
                                    key: (!m.key.is_empty()).then(|| m.key.to_vec()),
                                    payload: m.value.to_vec(),
                                    headers: Vec::new(),
                                });
                            }
                            per_partition.push(out);
                        }
                        Err(e) if matches!(*e, KafkaError::Kafka(KafkaCode::OffsetOutOfRange)) => {
                            reset.push(partition);
                        }
                        Err(e) => {
                            return Err(error(
                                &self.brokers,
                                format!("fetching {topic} partition {partition}: {e}"),
                            ))
                        }
                    }
                }
            }
        }
        if !reset.is_empty() {
            let earliest = offsets(
                &mut self.client,
                &self.brokers,
                topic,
                FetchOffset::Earliest,
            )?;
            for partition in reset {
                let to = earliest.get(&partition).copied().unwrap_or(0);
                tracing::warn!(
                    topic,
                    partition,
                    to,
                    "offset out of range; resuming at the earliest offset"
                );
                self.next.insert(partition, to);
            }
        }
        Ok(interleave(per_partition))
    }
}

fn offsets(
    client: &mut KafkaClient,
    brokers: &str,
    topic: &str,
    which: FetchOffset,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    // A topic just created may not have its leaders settled yet: the
    // broker answers NotLeaderForPartition for a moment. Retry, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.fetch_topic_offsets(topic, which) {
            Ok(list) => {
                return Ok(list
                    .into_iter()
                    .map(|po| (po.partition, po.offset))
                    .collect())
            }
            Err(e) if Instant::now() < deadline && leaders_moving(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                client
                    .load_metadata(&[topic])
                    .map_err(|e| explain(brokers, "loading metadata", e))?;
            }
            Err(e) => return Err(explain(brokers, &format!("listing offsets of {topic}"), e)),
        }
    }
}

/// Whether an error only says that a partition's leader is not known yet.
fn leaders_moving(e: &KafkaError) -> bool {
    let transient = |code: &KafkaCode| {
        matches!(
            code,
            KafkaCode::NotLeaderForPartition
                | KafkaCode::LeaderNotAvailable
                | KafkaCode::UnknownTopicOrPartition
        )
    };
    match e {
        KafkaError::Kafka(code) => transient(code),
        KafkaError::TopicPartitionError { error_code, .. } => transient(error_code),
        _ => false,
    }
}

/// Reads the input topic from the group's committed offsets (or the
/// earliest offset where none is committed). Reads only when polled, and a
/// fetch is at most about 1 MiB per partition.
pub struct KafkaSource {
    config: KafkaConfig,
    reader: TopicReader,
    buffer: VecDeque<Envelope>,
}

impl KafkaSource {
    /// Connects, finds this replica's partitions and where each resumes,
    /// and registers them with `acks`.
    pub fn connect(
        config: &KafkaConfig,
        replica: Replica,
        acks: &Acks,
    ) -> Result<KafkaSource, ConnectorError> {
        let brokers = config.brokers.as_str();
        let mut client = connect(brokers)?;
        let all = ensure_topic(&mut client, brokers, &config.topic)?;
        let mine: Vec<i32> = all.iter().copied().filter(|&p| replica.owns(p)).collect();
        if mine.is_empty() {
            tracing::warn!(
                topic = %config.topic,
                partitions = all.len(),
                ?replica,
                "this replica owns no partition of the input topic; it will stay idle"
            );
        }
        let earliest = offsets(&mut client, brokers, &config.topic, FetchOffset::Earliest)?;
        let committed: BTreeMap<i32, i64> = client
            .fetch_group_topic_offset(&config.group, &config.topic)
            .map_err(|e| {
                explain(
                    brokers,
                    &format!("reading group {}'s offsets", config.group),
                    e,
                )
            })?
            .into_iter()
            .map(|po| (po.partition, po.offset))
            .collect();
        let mut start = BTreeMap::new();
        for p in mine {
            let floor = earliest.get(&p).copied().unwrap_or(0);
            // -1 means nothing committed yet; below the earliest means the
            // committed records were deleted by retention.
            let at = committed
                .get(&p)
                .copied()
                .filter(|&o| o >= 0)
                .unwrap_or(floor)
                .max(floor);
            acks.start_partition(p, at);
            start.insert(p, at);
        }
        tracing::info!(topic = %config.topic, group = %config.group, ?start, "reading");
        let reader = TopicReader {
            client,
            brokers: config.brokers.clone(),
            topic: config.topic.clone(),
            next: start,
        };
        Ok(KafkaSource {
            config: config.clone(),
            reader,
            buffer: VecDeque::new(),
        })
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, _timeout: Duration) -> Result<Polled, ConnectorError> {
        if self.buffer.is_empty() {
            let arrived = Instant::now();
            self.buffer
                .extend(self.reader.fetch()?.into_iter().map(|f| Envelope {
                    key: f.key,
                    payload: f.payload,
                    headers: Vec::new(),
                    timestamp: None,
                    position: f.position,
                    arrived,
                }));
        }
        Ok(self.buffer.pop_front().map_or(Polled::Idle, Polled::Record))
    }

    fn committer(&mut self) -> Result<Option<Box<dyn Committer>>, ConnectorError> {
        Ok(Some(Box::new(KafkaCommitter {
            client: connect(&self.config.brokers)?,
            config: self.config.clone(),
        })))
    }
}

struct KafkaCommitter {
    client: KafkaClient,
    config: KafkaConfig,
}

impl Committer for KafkaCommitter {
    fn commit(&mut self, acks: &Acks) -> Result<(), ConnectorError> {
        let offsets = acks.committable();
        if offsets.is_empty() {
            return Ok(());
        }
        let topic = self.config.topic.as_str();
        self.client
            .commit_offsets(
                &self.config.group,
                offsets.iter().map(|&(p, o)| CommitOffset::new(topic, p, o)),
            )
            .map_err(|e| {
                explain(
                    &self.config.brokers,
                    &format!("committing offsets of group {}", self.config.group),
                    e,
                )
            })?;
        acks.mark_committed(&offsets);
        Ok(())
    }
}

/// Writes values to topics and waits until every in-sync replica has them.
pub struct TopicWriter {
    producer: Producer,
    brokers: String,
}

/// Records per produce request.
const PRODUCE_BATCH: usize = 1000;

impl TopicWriter {
    /// Connects and makes sure every topic in `topics` exists.
    pub fn connect(brokers: &str, topics: &[&str]) -> Result<TopicWriter, ConnectorError> {
        let mut client = connect(brokers)?;
        for topic in topics {
            ensure_topic(&mut client, brokers, topic)?;
        }
        client
            .load_metadata_all()
            .map_err(|e| explain(brokers, "loading metadata", e))?;
        let producer = Producer::from_client(client)
            .with_required_acks(RequiredAcks::All)
            .with_ack_timeout(Duration::from_secs(10))
            .create()
            .map_err(|e| explain(brokers, "creating the producer", e))?;
        Ok(TopicWriter {
            producer,
            brokers: brokers.to_owned(),
        })
    }

    /// Sends every `(topic, value)` and returns once all are acknowledged.
    /// Values without a key are spread over the topic's partitions.
    pub fn send_all(&mut self, records: &[(&str, &[u8])]) -> Result<(), ConnectorError> {
        for chunk in records.chunks(PRODUCE_BATCH) {
            let batch: Vec<Record<'_, (), &[u8]>> = chunk
                .iter()
                .map(|&(topic, value)| Record::from_value(topic, value))
                .collect();
            let confirms = self
                .producer
                .send_all(&batch)
                .map_err(|e| explain(&self.brokers, "producing", e))?;
            for confirm in confirms {
                for p in confirm.partition_confirms {
                    if let Err(code) = p.offset {
                        return Err(error(
                            &self.brokers,
                            format!(
                                "producing to {} partition {}: {code:?}",
                                confirm.topic, p.partition
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What goes to the dead-letter topic for a record fila could not process.
#[derive(Serialize)]
struct DeadLetter<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'a str,
    /// The original value, as text (invalid UTF-8 replaced).
    payload: String,
}

/// The pipeline's sink: results to the output topic, rejected records to
/// the dead-letter topic if one is set. `flush` returns once the broker has
/// acknowledged everything sent, which is what lets offsets be committed.
pub struct KafkaSink {
    writer: TopicWriter,
    output_topic: String,
    dlq_topic: Option<String>,
    input_topic: String,
    pending: Vec<(bool, Vec<u8>)>,
}

impl KafkaSink {
    pub fn connect(
        brokers: &str,
        input_topic: &str,
        output_topic: &str,
        dlq_topic: Option<&str>,
    ) -> Result<KafkaSink, ConnectorError> {
        let mut topics = vec![output_topic];
        topics.extend(dlq_topic);
        Ok(KafkaSink {
            writer: TopicWriter::connect(brokers, &topics)?,
            output_topic: output_topic.to_owned(),
            dlq_topic: dlq_topic.map(str::to_owned),
            input_topic: input_topic.to_owned(),
            pending: Vec::new(),
        })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, _key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.pending.push((false, payload.to_vec()));
        Ok(())
    }

    fn dead_letter(
        &mut self,
        position: Position,
        _key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let letter = DeadLetter {
            topic: &self.input_topic,
            partition: position.partition,
            offset: position.offset,
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        };
        let bytes = serde_json::to_vec(&letter).expect("a dead letter always serializes");
        self.pending.push((true, bytes));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let dlq = self.dlq_topic.as_deref().unwrap_or(&self.output_topic);
        let records: Vec<(&str, &[u8])> = self
            .pending
            .iter()
            .map(|(dead, v)| {
                (
                    if *dead {
                        dlq
                    } else {
                        self.output_topic.as_str()
                    },
                    v.as_slice(),
                )
            })
            .collect();
        self.writer.send_all(&records)?;
        self.pending.clear();
        Ok(())
    }

    fn has_dead_letter_destination(&self) -> bool {
        self.dlq_topic.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_broker_is_named_in_the_error() {
        // Port 1 on loopback: nothing listens there, so connect fails at once.
        let Err(e) = connect("127.0.0.1:1") else {
            panic!("connected to a broker on port 1")
        };
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(text.contains("cannot connect"), "{text}");
    }
}
