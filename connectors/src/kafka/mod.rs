//! Kafka sources and sinks, on two clients behind one interface.
//!
//! - [`ClientKind::Rdkafka`] (the default) is librdkafka through the
//!   `rdkafka` crate's synchronous API: `BaseConsumer` polled from the
//!   source's thread, `BaseProducer` with delivery callbacks. It speaks
//!   current protocol versions, so it works with Kafka 3.x and 4.x, and it
//!   joins consumer groups: the KIP-848 protocol where the broker offers
//!   it (4.x), cooperative-sticky otherwise.
//! - [`ClientKind::Kafka`] is the pure-Rust `kafka` crate. It speaks
//!   protocol v0, which Kafka 4.0 removed (KIP-896), so it works with 3.x
//!   brokers only, and it has no group membership: partitions are
//!   assigned statically.
//!
//! Either way, offsets are committed under the group only up to what
//! [`Acks`](crate::Acks) allows: every record at or below them has been
//! acknowledged by the output or the dead-letter topic.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{ChangelogReader, ConnectorError, Position, Sink, Source};

mod dead_letter;
mod probe;
mod properties;
mod rd;
mod retry;
mod v0;

pub use dead_letter::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
pub use probe::BrokerVersions;
pub use properties::{redact, ClientProperties, Cluster};
pub use rd::{DRAIN_TIMEOUT, MAX_EXACTLY_ONCE_INTERVAL};
use retry::Outage;
pub use retry::DEFAULT_RETRY_TIMEOUT;

/// Which Kafka client to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ClientKind {
    /// librdkafka: Kafka 3.x and 4.x, consumer groups.
    #[default]
    Rdkafka,
    /// The pure-Rust `kafka` crate: Kafka 3.x only, static assignment.
    Kafka,
}

/// One fila process's share of the partitions: replica `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub index: u32,
    pub count: u32,
}

impl Replica {
    pub const ALL: Replica = Replica { index: 0, count: 1 };

    pub fn owns(&self, partition: i32) -> bool {
        partition as u32 % self.count == self.index
    }
}

impl std::str::FromStr for Replica {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected I/N with 0 <= I < N, like 0/2, got `{s}`");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.parse::<u32>().map_err(|_| bad())?,
            n.parse::<u32>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Replica { index, count })
    }
}

/// Which consumer-group protocol a member uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GroupProtocol {
    /// KIP-848 (`consumer`) if the broker offers it, else `classic`.
    #[default]
    Auto,
    /// KIP-848: the broker assigns, incrementally (Kafka 4.x).
    Consumer,
    /// The classic protocol with the cooperative-sticky assignor.
    Classic,
}

/// How a source gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Join the group: Kafka assigns the partitions and moves them when
    /// members come and go (rdkafka only).
    Group(GroupProtocol),
    /// Read the partitions p with p mod N = I, whoever else reads.
    Static(Replica),
}

/// What policy a committed offset that is out of range (or missing) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OffsetReset {
    /// Start at the partition's earliest record.
    #[default]
    Earliest,
    /// Start at the partition's end: only records written from now on.
    Latest,
    /// Stop with an error naming the partition.
    Error,
}

impl OffsetReset {
    /// The value of librdkafka's `auto.offset.reset` for this policy.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::Error => "error",
        }
    }
}

/// Where the source reads and commits.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The cluster: its brokers and client properties.
    pub cluster: Cluster,
    pub topic: String,
    pub group: String,
    pub assignment: Assignment,
    /// Where a partition starts when the group has no committed offset
    /// for it, or the committed offset is out of range.
    pub offset_reset: OffsetReset,
    /// How long the broker may stay unreachable before the source fails.
    pub retry_timeout: Duration,
    /// The topic is the job's own (a repartition topic, read by this group
    /// alone): the records before each committed offset are deleted from
    /// it, so it does not keep a copy of everything the job read. The
    /// rdkafka client only; never for a user's topic.
    pub purge_committed: bool,
}

/// Where the sink writes.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The cluster: its brokers and client properties.
    pub cluster: Cluster,
    /// The topic the records came from, named in dead letters.
    pub input_topic: String,
    pub output_topic: String,
    /// Records that cannot be processed go here; without it the driver
    /// logs and counts them.
    pub dlq_topic: Option<String>,
    /// How long the broker may stay unreachable before a flush fails.
    pub retry_timeout: Duration,
}

/// The source for `config` on client `kind`. It keeps the offsets it
/// hands out in an offset tracker of its own, which it hands to the driver
/// with its committer (`Source::committing`).
pub fn kafka_source(
    kind: ClientKind,
    config: SourceConfig,
) -> Result<Box<dyn Source>, ConnectorError> {
    check(kind, &config.cluster)?;
    match kind {
        ClientKind::Rdkafka => Ok(Box::new(rd::RdSource::connect(config)?)),
        ClientKind::Kafka => {
            let Assignment::Static(replica) = config.assignment else {
                return Err(error(
                    &config.cluster.brokers,
                    "the kafka client cannot join a consumer group; give --replica I/N \
                     (0/1 reads every partition), or use --kafka-client rdkafka",
                ));
            };
            Ok(Box::new(v0::KafkaSource::connect(&config, replica)?))
        }
    }
}

/// The pipeline's Kafka sink for `config`. Its `flush` returns once the
/// broker has acknowledged everything sent; a broker unreachable for
/// longer than the retry timeout makes it fail.
pub fn kafka_sink(kind: ClientKind, config: &SinkConfig) -> Result<Box<dyn Sink>, ConnectorError> {
    check(kind, &config.cluster)?;
    Ok(match kind {
        ClientKind::Rdkafka => Box::new(rd::RdSink::connect(config)?),
        ClientKind::Kafka => Box::new(v0::KafkaSink::connect(config)?),
    })
}

/// A source and the sink it runs into.
pub type Pipe = (Box<dyn Source>, Box<dyn Sink>);

/// A source and a sink that run exactly-once on the rdkafka client: each
/// commit of the driver is one Kafka transaction holding the outputs, the
/// dead letters and the input offsets that produced them, committed with
/// the consumer group's metadata so that a member whose partitions moved
/// cannot commit them (KIP-447). The source reads committed records only.
/// docs/design/delivery.md has the protocol.
pub fn kafka_exactly_once(
    kind: ClientKind,
    source: SourceConfig,
    sink: &SinkConfig,
) -> Result<Pipe, ConnectorError> {
    check(kind, &source.cluster)?;
    check(kind, &sink.cluster)?;
    match kind {
        ClientKind::Rdkafka => rd::exactly_once(source, sink),
        ClientKind::Kafka => Err(ConnectorError::Config {
            message: "the kafka client has no transactions: exactly-once needs \
                      --kafka-client rdkafka"
                .into(),
        }),
    }
}

/// Checks that `cluster`'s client properties suit client `kind`: none of
/// fila's own keys, and none the `kafka` client cannot honour. Remembers
/// their secrets so that no log line or error shows them.
fn check(kind: ClientKind, cluster: &Cluster) -> Result<(), ConnectorError> {
    let properties = &cluster.properties;
    properties.remember_secrets();
    properties
        .check_owned()
        .map_err(|message| ConnectorError::Config { message })?;
    if kind == ClientKind::Kafka {
        if let Some((key, _)) = properties.iter().next() {
            return Err(ConnectorError::Config {
                message: format!(
                    "the kafka client takes no client properties (it has no TLS, SASL or \
                     compression), so it cannot honour {key}; use --kafka-client rdkafka"
                ),
            });
        }
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions (replication factor 1, for
/// a test or a single-broker set-up). Succeeds if it already exists.
pub fn create_topic(
    cluster: impl Into<Cluster>,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    create_topic_configured(cluster, topic, partitions, &[])
}

/// [`create_topic`], with the topic configuration `config` (pairs such as
/// `("max.message.bytes", "20000")`) if it is created.
pub fn create_topic_configured(
    cluster: impl Into<Cluster>,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<(), ConnectorError> {
    let cluster = cluster.into();
    check(ClientKind::Rdkafka, &cluster)?;
    rd::create_topic(&cluster, topic, partitions, config)
}

/// Makes `topic` a keyed stage's changelog for an input of `partitions`
/// partitions: compacted, with at least that many partitions. Succeeds if
/// it exists with enough.
pub fn create_changelog(
    kind: ClientKind,
    cluster: impl Into<Cluster>,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    let cluster = cluster.into();
    check(kind, &cluster)?;
    match kind {
        ClientKind::Rdkafka => rd::create_changelog(&cluster, topic, partitions),
        ClientKind::Kafka => Err(no_changelogs(&cluster.brokers)),
    }
}

/// Makes `topic` a repartition topic of `partitions` partitions (the
/// broker's default replication) unless it exists.
pub fn create_repartition(
    kind: ClientKind,
    cluster: impl Into<Cluster>,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    let cluster = cluster.into();
    check(kind, &cluster)?;
    match kind {
        ClientKind::Rdkafka => rd::create_repartition(&cluster, topic, partitions),
        ClientKind::Kafka => Err(no_changelogs(&cluster.brokers)),
    }
}

/// What reads keyed stages' changelogs back (`ChangelogReader`).
pub fn changelog_reader(
    kind: ClientKind,
    cluster: impl Into<Cluster>,
) -> Result<Box<dyn ChangelogReader>, ConnectorError> {
    let cluster = cluster.into();
    check(kind, &cluster)?;
    match kind {
        ClientKind::Rdkafka => Ok(Box::new(rd::RdChangelogReader::connect(&cluster)?)),
        ClientKind::Kafka => Err(no_changelogs(&cluster.brokers)),
    }
}

fn no_changelogs(brokers: &str) -> ConnectorError {
    error(
        brokers,
        "the kafka client cannot read committed records back, so it keeps no changelogs \
         and no repartition topics; use --kafka-client rdkafka",
    )
}

/// Sets group `group`'s committed offsets of `topic`, partition by
/// partition, outside any group membership. For a group with no running
/// member: an operator moving it, or a test.
pub fn commit_group_offsets(
    kind: ClientKind,
    cluster: impl Into<Cluster>,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), ConnectorError> {
    let cluster = cluster.into();
    check(kind, &cluster)?;
    match kind {
        ClientKind::Rdkafka => rd::commit_group_offsets(&cluster, group, topic, offsets),
        ClientKind::Kafka => v0::commit_group_offsets(&cluster.brokers, group, topic, offsets),
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Empty on the `kafka` client (protocol v0 has no headers).
    pub headers: Vec<(String, Vec<u8>)>,
}

enum ReaderImpl {
    Rd(rd::TopicReader),
    V0(Box<v0::TopicReader>),
}

/// Reads given partitions of a topic from given offsets, with no group:
/// the load client's view of the output topic, and tests'.
pub struct TopicReader(ReaderImpl);

impl TopicReader {
    /// Reads `topic` on `cluster`, partition p from `start[p]`.
    pub fn new(
        kind: ClientKind,
        cluster: impl Into<Cluster>,
        topic: &str,
        start: BTreeMap<i32, i64>,
    ) -> Result<TopicReader, ConnectorError> {
        let cluster = cluster.into();
        check(kind, &cluster)?;
        Ok(TopicReader(match kind {
            ClientKind::Rdkafka => ReaderImpl::Rd(rd::TopicReader::new(&cluster, topic, start)?),
            ClientKind::Kafka => ReaderImpl::V0(Box::new(v0::TopicReader::new(
                &cluster.brokers,
                topic,
                start,
            )?)),
        }))
    }

    /// The current end (next offset to be written) of every partition,
    /// creating the topic (with the broker's default partition count) if
    /// it does not exist.
    pub fn end_offsets(
        kind: ClientKind,
        cluster: impl Into<Cluster>,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        TopicReader::offsets(kind, cluster.into(), topic, false)
    }

    /// The start (the first record kept) of every partition, creating the
    /// topic if it does not exist: where records were deleted up to.
    pub fn start_offsets(
        kind: ClientKind,
        cluster: impl Into<Cluster>,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        TopicReader::offsets(kind, cluster.into(), topic, true)
    }

    fn offsets(
        kind: ClientKind,
        cluster: Cluster,
        topic: &str,
        start: bool,
    ) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        check(kind, &cluster)?;
        match (kind, start) {
            (ClientKind::Rdkafka, false) => rd::end_offsets(&cluster, topic),
            (ClientKind::Rdkafka, true) => rd::start_offsets(&cluster, topic),
            (ClientKind::Kafka, false) => v0::TopicReader::end_offsets(&cluster.brokers, topic),
            (ClientKind::Kafka, true) => v0::TopicReader::start_offsets(&cluster.brokers, topic),
        }
    }

    /// Waits until the reader has read every partition to its end once (so
    /// it is fetching, and what is written next arrives without a start-up
    /// delay), or until `timeout` passes. Returns whether it got there.
    pub fn wait_caught_up(&mut self, timeout: Duration) -> Result<bool, ConnectorError> {
        match &mut self.0 {
            ReaderImpl::Rd(r) => r.wait_caught_up(timeout),
            // Its fetches are synchronous: each one reads from the broker.
            ReaderImpl::V0(_) => Ok(true),
        }
    }

    /// What arrived since the last call, waiting up to about 100 ms for
    /// something to arrive.
    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        match &mut self.0 {
            ReaderImpl::Rd(r) => r.fetch(),
            ReaderImpl::V0(r) => r.fetch(),
        }
    }
}

/// A record to send: topic, key, value.
pub type KeyedRecord<'a> = (&'a str, Option<&'a [u8]>, &'a [u8]);

enum WriterImpl {
    Rd(rd::TopicWriter),
    V0(Box<v0::TopicWriter>),
}

/// Writes values to topics and waits until every one is acknowledged.
pub struct TopicWriter(WriterImpl);

impl TopicWriter {
    /// Connects and makes sure every topic in `topics` exists.
    pub fn connect(
        kind: ClientKind,
        cluster: impl Into<Cluster>,
        topics: &[&str],
    ) -> Result<TopicWriter, ConnectorError> {
        let cluster = cluster.into();
        check(kind, &cluster)?;
        Ok(TopicWriter(match kind {
            ClientKind::Rdkafka => WriterImpl::Rd(rd::TopicWriter::connect(&cluster, topics)?),
            ClientKind::Kafka => WriterImpl::V0(Box::new(v0::TopicWriter::connect(
                &cluster.brokers,
                topics,
            )?)),
        }))
    }

    /// Sends every `(topic, value)` and returns once all are acknowledged.
    /// Values without a key are spread over the topic's partitions.
    pub fn send_all(&mut self, records: &[(&str, &[u8])]) -> Result<(), ConnectorError> {
        match &mut self.0 {
            WriterImpl::Rd(w) => w.send_all(records.iter().map(|&(t, v)| (t, None, v))),
            WriterImpl::V0(w) => w.send_all(records),
        }
    }

    /// Sends every `(topic, value)` as [`send_all`](Self::send_all) does,
    /// but returns without waiting for the acknowledgements where the
    /// client can (librdkafka), so that sends follow each other without a
    /// round trip between them; [`flush`](Self::flush) waits for them. The
    /// `kafka` client waits here, as `send_all`.
    pub fn send(&mut self, records: &[(&str, &[u8])]) -> Result<(), ConnectorError> {
        match &mut self.0 {
            WriterImpl::Rd(w) => w.send(records.iter().map(|&(t, v)| (t, None, v))),
            WriterImpl::V0(w) => w.send_all(records),
        }
    }

    /// Returns once everything sent is acknowledged, or the first failure.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        match &mut self.0 {
            WriterImpl::Rd(w) => w.flush(),
            WriterImpl::V0(_) => Ok(()),
        }
    }

    /// Sends every `(topic, key, value)` and returns once all are
    /// acknowledged. Records with the same key go to the same partition.
    /// The `kafka` client cannot send keys.
    pub fn send_keyed(&mut self, records: &[KeyedRecord<'_>]) -> Result<(), ConnectorError> {
        match &mut self.0 {
            WriterImpl::Rd(w) => w.send_all(records.iter().copied()),
            WriterImpl::V0(w) => Err(error(
                w.brokers(),
                "the kafka client does not send keys; use --kafka-client rdkafka",
            )),
        }
    }
}

/// An error of the clients of `brokers`, with any secret scrubbed from the
/// message (librdkafka quotes property values in its own).
fn error(brokers: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Kafka {
        brokers: brokers.to_owned(),
        message: redact(&message.into()),
    }
}

/// The bootstrap addresses in a comma-separated list.
fn hosts(brokers: &str) -> Result<Vec<String>, ConnectorError> {
    let hosts: Vec<String> = brokers
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(error(brokers, "no broker address given"));
    }
    Ok(hosts)
}

/// Merges per-partition batches round-robin. A fetch returns each
/// partition's records as one block; handing them out block by block would
/// run a whole partition's share of a burst before the next partition's
/// first record. Producers spread a burst over partitions in turn, so taking
/// one record from each partition in turn keeps close to arrival order.
fn interleave<T>(per_partition: Vec<Vec<T>>) -> Vec<T> {
    let total = per_partition.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = per_partition.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for it in &mut iters {
            out.extend(it.next());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_split_partitions_by_modulo() {
        let r: Replica = "1/2".parse().unwrap();
        assert_eq!((0..6).filter(|&p| r.owns(p)).collect::<Vec<_>>(), [1, 3, 5]);
        assert!(Replica::ALL.owns(7));
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Replica>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fetched_partitions_are_interleaved_round_robin() {
        let merged = interleave(vec![
            vec!["a0", "a1", "a2"],
            vec!["b0"],
            vec![],
            vec!["c0", "c1"],
        ]);
        assert_eq!(merged, ["a0", "b0", "c0", "a1", "c1", "a2"]);
    }
}
