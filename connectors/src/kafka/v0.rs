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
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::client::{
    CommitOffset, FetchOffset, FetchPartition, GroupOffsetStorage, KafkaClient, RequiredAcks,
};
use kafka::error::{Error as KafkaError, KafkaCode};
use kafka::producer::{Producer, Record};
use serde::Serialize;

use super::{
    error, hosts, interleave, BrokerVersions, Fetched, OffsetReset, Outage, Replica, SinkConfig,
    SourceConfig, DEFAULT_RETRY_TIMEOUT,
};
use crate::{
    Acks, Committer, Committing, ConnectorError, Envelope, Polled, Position, Sink, Source,
};

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

/// Whether retrying, with a fresh client (new connections and metadata),
/// can outlast the error: the broker is restarting, stalled, or moving a
/// partition's leadership.
fn transient(e: &KafkaError) -> bool {
    let code = |c: &KafkaCode| {
        use KafkaCode::*;
        matches!(
            c,
            UnknownTopicOrPartition
                | LeaderNotAvailable
                | NotLeaderForPartition
                | RequestTimedOut
                | BrokerNotAvailable
                | ReplicaNotAvailable
                | NetworkException
                | GroupLoadInProgress
                | GroupCoordinatorNotAvailable
                | NotCoordinatorForGroup
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
        )
    };
    match e {
        KafkaError::Io(_) | KafkaError::NoHostReachable | KafkaError::UnexpectedEOF => true,
        KafkaError::Kafka(c) => code(c),
        KafkaError::TopicPartitionError { error_code, .. } => code(error_code),
        KafkaError::ArcSelf(inner) => transient(inner),
        _ => false,
    }
}

/// A failed request: a fault of the broker's that retrying can outlast,
/// or one it cannot.
enum Failure {
    Transient(String),
    Fatal(ConnectorError),
}

impl Failure {
    fn of(brokers: &str, what: &str, e: KafkaError) -> Failure {
        if transient(&e) {
            Failure::Transient(format!("{what}: {e}"))
        } else {
            Failure::Fatal(explain(brokers, what, e))
        }
    }

    /// For callers that do not retry.
    fn into_error(self, brokers: &str) -> ConnectorError {
        match self {
            Failure::Transient(message) => error(brokers, message),
            Failure::Fatal(e) => e,
        }
    }
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

/// Bytes asked for per partition in a fetch, at first.
const FETCH_BYTES: i32 = 256 << 10;
/// A partition whose next record does not fit gets twice the bytes, up to
/// this; a larger record stops the run with an error naming it.
const MAX_FETCH_BYTES: i32 = 64 << 20;

/// The longest a fetch waits on the broker. A caller that allows longer
/// just polls again; a wait this short stays far inside the client's
/// socket timeouts.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(5);

/// Reads assigned partitions of a topic from given offsets.
pub struct TopicReader {
    client: KafkaClient,
    brokers: String,
    topic: String,
    next: BTreeMap<i32, i64>,
    /// Bytes to ask for, per partition that needed more than
    /// [`FETCH_BYTES`].
    fetch_bytes: BTreeMap<i32, i32>,
    /// What an offset out of range resumes at.
    reset: OffsetReset,
    outage: Outage,
    /// After a transient failure: the next fetch starts with a new client.
    reconnect: bool,
    /// No fetch before this (the backoff after a failure).
    next_attempt: Instant,
}

impl TopicReader {
    /// Reads `topic` on `brokers`, partition p from `start[p]`.
    pub fn new(
        brokers: &str,
        topic: &str,
        start: BTreeMap<i32, i64>,
    ) -> Result<TopicReader, ConnectorError> {
        Ok(TopicReader::with(
            connect(brokers)?,
            brokers,
            topic,
            start,
            OffsetReset::Earliest,
            DEFAULT_RETRY_TIMEOUT,
        ))
    }

    fn with(
        client: KafkaClient,
        brokers: &str,
        topic: &str,
        start: BTreeMap<i32, i64>,
        reset: OffsetReset,
        retry_timeout: Duration,
    ) -> TopicReader {
        TopicReader {
            client,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            next: start,
            fetch_bytes: BTreeMap::new(),
            reset,
            outage: Outage::new(brokers, retry_timeout),
            reconnect: false,
            next_attempt: Instant::now(),
        }
    }

    /// The current end (next offset to be written) of every partition.
    pub fn end_offsets(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        let mut client = connect(brokers)?;
        ensure_topic(&mut client, brokers, topic)?;
        offsets(&mut client, brokers, topic, FetchOffset::Latest)
    }

    /// One fetch: waits up to about 100 ms on the broker for data.
    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        self.fetch_within(Duration::from_millis(100))
    }

    /// One fetch that waits up to about `wait` on the broker for data:
    /// whole milliseconds (under one is no wait), at most
    /// [`MAX_FETCH_WAIT`]. A broker fault is retried after a backoff, on
    /// a new client, for up to the retry timeout; meanwhile this returns
    /// nothing, after waiting at most `wait`.
    fn fetch_within(&mut self, wait: Duration) -> Result<Vec<Fetched>, ConnectorError> {
        let now = Instant::now();
        if now < self.next_attempt {
            std::thread::sleep(wait.min(self.next_attempt - now));
            return Ok(Vec::new());
        }
        if self.reconnect {
            match connect(&self.brokers) {
                Ok(client) => {
                    self.client = client;
                    self.reconnect = false;
                }
                // Any failure to connect is the broker not answering yet.
                Err(e) => return self.failed(e.to_string()),
            }
        }
        let wait = wait.min(MAX_FETCH_WAIT);
        if self.client.fetch_max_wait_time().as_millis() != wait.as_millis() {
            self.client
                .set_fetch_max_wait_time(wait)
                .expect("MAX_FETCH_WAIT is a valid fetch wait");
        }
        match self.fetch_once() {
            Ok(fetched) => {
                self.outage.succeeded();
                Ok(fetched)
            }
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(cause)) => self.failed(cause),
        }
    }

    fn failed(&mut self, cause: String) -> Result<Vec<Fetched>, ConnectorError> {
        self.outage.failed(&cause);
        self.outage.check()?;
        self.reconnect = true;
        self.next_attempt = Instant::now() + self.outage.backoff();
        Ok(Vec::new())
    }

    fn fetch_once(&mut self) -> Result<Vec<Fetched>, Failure> {
        let topic = self.topic.as_str();
        let requests = self.next.iter().map(|(&p, &offset)| {
            let bytes = self.fetch_bytes.get(&p).copied().unwrap_or(FETCH_BYTES);
            FetchPartition::new(topic, p, offset).with_max_bytes(bytes)
        });
        let responses = self
            .client
            .fetch_messages(requests)
            .map_err(|e| Failure::of(&self.brokers, &format!("fetching from {topic}"), e))?;
        let mut per_partition: Vec<Vec<Fetched>> = Vec::new();
        let mut reset = Vec::new();
        let mut grow = Vec::new();
        for response in &responses {
            for t in response.topics() {
                for p in t.partitions() {
                    let partition = p.partition();
                    let Some(next) = self.next.get_mut(&partition) else {
                        continue;
                    };
                    match p.data() {
                        Ok(data) => {
                            let asked = *next;
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
                            // Nothing came back though the partition has
                            // records past `asked`: the message set that
                            // holds the next one is larger than the bytes
                            // asked for.
                            if out.is_empty() && data.highwatermark_offset() > asked {
                                grow.push((partition, asked));
                            }
                            per_partition.push(out);
                        }
                        Err(e) if matches!(*e, KafkaError::Kafka(KafkaCode::OffsetOutOfRange)) => {
                            reset.push(partition);
                        }
                        Err(e) => {
                            let what = format!("fetching {topic} partition {partition}");
                            return Err(match &*e {
                                KafkaError::Kafka(code) => {
                                    Failure::of(&self.brokers, &what, KafkaError::Kafka(*code))
                                }
                                other => {
                                    Failure::Fatal(error(&self.brokers, format!("{what}: {other}")))
                                }
                            });
                        }
                    }
                }
            }
        }
        for (partition, offset) in grow {
            let bytes = self.fetch_bytes.entry(partition).or_insert(FETCH_BYTES);
            if *bytes >= MAX_FETCH_BYTES {
                return Err(Failure::Fatal(error(
                    &self.brokers,
                    format!(
                        "the records from offset {offset} of {topic} partition {partition} \
                         do not fit in {} MiB, the most fila fetches at once",
                        MAX_FETCH_BYTES >> 20
                    ),
                )));
            }
            *bytes = (*bytes * 2).min(MAX_FETCH_BYTES);
            tracing::info!(
                topic,
                partition,
                offset,
                bytes = *bytes,
                "the next records did not fit in a fetch; asking for more bytes"
            );
        }
        if !reset.is_empty() {
            let (which, name) = match self.reset {
                OffsetReset::Earliest => (FetchOffset::Earliest, "earliest"),
                OffsetReset::Latest => (FetchOffset::Latest, "latest"),
                OffsetReset::Error => {
                    let partition = reset[0];
                    return Err(Failure::Fatal(error(
                        &self.brokers,
                        format!(
                            "offset {} of {topic} partition {partition} is out of range \
                             (deleted by retention?), and --offset-reset is error",
                            self.next[&partition]
                        ),
                    )));
                }
            };
            let to =
                offsets(&mut self.client, &self.brokers, topic, which).map_err(Failure::Fatal)?;
            for partition in reset {
                let to = to.get(&partition).copied().unwrap_or(0);
                tracing::warn!(
                    topic,
                    partition,
                    from = self.next[&partition],
                    to,
                    "offset out of range; resuming at the {name} offset (--offset-reset)"
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

/// Reads the input topic from the group's committed offsets (or where
/// `--offset-reset` says, where none is committed or it is out of range).
/// Reads only when polled. A broker fault is retried with a fresh client
/// after a backoff, for up to the retry timeout; a poll meanwhile returns
/// idle after at most its timeout, so the driver can still stop.
pub struct KafkaSource {
    config: SourceConfig,
    reader: TopicReader,
    buffer: VecDeque<Envelope>,
    acks: Arc<Acks>,
}

impl KafkaSource {
    /// Connects, finds this replica's partitions and where each resumes,
    /// and registers them with `acks`.
    pub fn connect(config: &SourceConfig, replica: Replica) -> Result<KafkaSource, ConnectorError> {
        let acks = Arc::new(Acks::new());
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
        let latest = offsets(&mut client, brokers, &config.topic, FetchOffset::Latest)?;
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
            let end = latest.get(&p).copied().unwrap_or(floor);
            let at = match committed.get(&p).copied().filter(|&o| o >= 0) {
                Some(o) if (floor..=end).contains(&o) => o,
                // -1 means nothing committed yet; outside the log means
                // the records were deleted by retention, or the topic
                // was made anew.
                found => {
                    let why = match found {
                        Some(o) => {
                            format!("the committed offset {o} is out of range {floor}..={end}")
                        }
                        None => "nothing is committed".to_owned(),
                    };
                    let at = match config.offset_reset {
                        OffsetReset::Earliest => floor,
                        OffsetReset::Latest => end,
                        OffsetReset::Error => {
                            return Err(error(
                                brokers,
                                format!(
                                    "partition {p} of {}: {why} for group {}, and \
                                     --offset-reset is error",
                                    config.topic, config.group
                                ),
                            ))
                        }
                    };
                    if found.is_some() {
                        tracing::warn!(topic = %config.topic, partition = p, at, "{why}; starting where --offset-reset says");
                    }
                    at
                }
            };
            acks.start_partition(p, at);
            start.insert(p, at);
        }
        tracing::info!(topic = %config.topic, group = %config.group, ?start, "reading");
        let reader = TopicReader::with(
            client,
            brokers,
            &config.topic,
            start,
            config.offset_reset,
            config.retry_timeout,
        );
        Ok(KafkaSource {
            config: config.clone(),
            reader,
            buffer: VecDeque::new(),
            acks,
        })
    }
}

impl Source for KafkaSource {
    /// Fetches only when what the last fetch brought is used up; the fetch
    /// waits on the broker for about `timeout` at most.
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError> {
        if self.buffer.is_empty() {
            let fetched = self.reader.fetch_within(timeout)?;
            let arrived = Instant::now();
            self.buffer.extend(fetched.into_iter().map(|f| Envelope {
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

    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(Some(Committing {
            acks: self.acks.clone(),
            committer: Box::new(KafkaCommitter {
                client: Some(connect(&self.config.brokers)?),
                outage: Outage::new(&self.config.brokers, self.config.retry_timeout),
                config: self.config.clone(),
                acks: self.acks.clone(),
            }),
        }))
    }
}

/// Commits on a client of its own. A broker fault leaves the offsets
/// committable, and the next commit, on a new client, carries them.
struct KafkaCommitter {
    /// `None` after a transient failure, until the next commit connects.
    client: Option<KafkaClient>,
    outage: Outage,
    config: SourceConfig,
    acks: Arc<Acks>,
}

impl KafkaCommitter {
    fn try_commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), Failure> {
        let brokers = self.config.brokers.as_str();
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(connect(brokers).map_err(|e| Failure::Transient(e.to_string()))?),
        };
        let topic = self.config.topic.as_str();
        client
            .commit_offsets(
                &self.config.group,
                offsets.iter().map(|&(p, o)| CommitOffset::new(topic, p, o)),
            )
            .map_err(|e| {
                Failure::of(
                    brokers,
                    &format!("committing offsets of group {}", self.config.group),
                    e,
                )
            })
    }
}

impl Committer for KafkaCommitter {
    fn commit(&mut self) -> Result<(), ConnectorError> {
        let acks = self.acks.clone();
        let offsets = acks.committable();
        if offsets.is_empty() {
            return Ok(());
        }
        match self.try_commit(&offsets) {
            Ok(()) => {
                self.outage.succeeded();
                acks.mark_committed(&offsets);
                Ok(())
            }
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(cause)) => {
                // The uncommitted bound holds the source back meanwhile.
                self.outage.failed(&cause);
                self.client = None;
                self.outage.check()
            }
        }
    }
}

/// Sets group `group`'s committed offsets of `topic` (see the rdkafka
/// client's function of the same name).
pub fn commit_group_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), ConnectorError> {
    let mut client = connect(brokers)?;
    client
        .commit_offsets(
            group,
            offsets.iter().map(|&(p, o)| CommitOffset::new(topic, p, o)),
        )
        .map_err(|e| explain(brokers, &format!("committing offsets of group {group}"), e))
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
        self.try_send_all(records)
            .map_err(|f| f.into_error(&self.brokers))
    }

    fn try_send_all(&mut self, records: &[(&str, &[u8])]) -> Result<(), Failure> {
        for chunk in records.chunks(PRODUCE_BATCH) {
            let batch: Vec<Record<'_, (), &[u8]>> = chunk
                .iter()
                .map(|&(topic, value)| Record::from_value(topic, value))
                .collect();
            let confirms = self
                .producer
                .send_all(&batch)
                .map_err(|e| Failure::of(&self.brokers, "producing", e))?;
            for confirm in confirms {
                for p in confirm.partition_confirms {
                    if let Err(code) = p.offset {
                        return Err(Failure::of(
                            &self.brokers,
                            &format!("producing to {} partition {}", confirm.topic, p.partition),
                            KafkaError::Kafka(code),
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
///
/// A broker fault during a flush is retried, after a backoff, on a new
/// producer, for up to the retry timeout. The whole batch is sent again:
/// what the broker had already taken is written twice, which at-least-once
/// allows (and the batch is at most a window).
pub struct KafkaSink {
    /// `None` after a transient failure, until the next attempt connects.
    writer: Option<TopicWriter>,
    brokers: String,
    output_topic: String,
    dlq_topic: Option<String>,
    input_topic: String,
    pending: Vec<(bool, Vec<u8>)>,
    outage: Outage,
}

impl KafkaSink {
    pub fn connect(config: &SinkConfig) -> Result<KafkaSink, ConnectorError> {
        let mut sink = KafkaSink {
            writer: None,
            brokers: config.brokers.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            input_topic: config.input_topic.clone(),
            pending: Vec::new(),
            outage: Outage::new(&config.brokers, config.retry_timeout),
        };
        sink.writer = Some(TopicWriter::connect(&config.brokers, &sink.topics())?);
        Ok(sink)
    }

    fn topics(&self) -> Vec<&str> {
        let mut topics = vec![self.output_topic.as_str()];
        topics.extend(self.dlq_topic.as_deref());
        topics
    }

    fn try_flush(&mut self) -> Result<(), Failure> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let writer = TopicWriter::connect(&self.brokers, &self.topics())
                    .map_err(|e| Failure::Transient(e.to_string()))?;
                self.writer.insert(writer)
            }
        };
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
        writer.try_send_all(&records)
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
        loop {
            match self.try_flush() {
                Ok(()) => {
                    self.outage.succeeded();
                    self.pending.clear();
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(cause)) => {
                    self.outage.failed(&cause);
                    self.outage.check()?;
                    self.writer = None;
                    std::thread::sleep(self.outage.backoff());
                }
            }
        }
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

    #[test]
    fn a_poll_waits_on_the_broker_as_long_as_its_timeout_allows() {
        // No partitions: the fetch asks no broker anything.
        let mut source = KafkaSource {
            config: SourceConfig {
                brokers: String::new(),
                topic: "t".into(),
                group: "g".into(),
                assignment: super::super::Assignment::Static(Replica::ALL),
                offset_reset: OffsetReset::Earliest,
                retry_timeout: DEFAULT_RETRY_TIMEOUT,
            },
            reader: TopicReader::with(
                KafkaClient::new(Vec::new()),
                "",
                "t",
                BTreeMap::new(),
                OffsetReset::Earliest,
                DEFAULT_RETRY_TIMEOUT,
            ),
            buffer: VecDeque::new(),
            acks: Arc::new(Acks::new()),
        };
        for (timeout, wait) in [
            (Duration::from_millis(20), Duration::from_millis(20)),
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_secs(60), MAX_FETCH_WAIT),
        ] {
            assert!(matches!(source.poll(timeout).unwrap(), Polled::Idle));
            let set = source.reader.client.fetch_max_wait_time();
            assert_eq!(set, wait, "poll({timeout:?})");
        }
        // The load client's reader keeps its own wait.
        source.reader.fetch().unwrap();
        let set = source.reader.client.fetch_max_wait_time();
        assert_eq!(set, Duration::from_millis(100));
    }
}
