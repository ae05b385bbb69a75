//! The pipeline's sink: outputs to the output topic, dead letters with
//! their position and reason in headers.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admin::{admin_client, ensure_topic, topic_config, LOOKUP_TIMEOUT};
use super::config::{kafka_error, preflight};
use super::produce::{
    batch_at_most, max_record_bytes, producer, producer_with, RequestSize, Writer, RECORD_OVERHEAD,
};
use super::source::RdSource;
use super::transaction::{Link, Transaction};
use crate::kafka::dead_letter::{
    cut_to_fit, prefix, reason_room, room, BROKER_DEFAULT_RECORD_LIMIT, DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use crate::kafka::{Cluster, Outage, SinkConfig};
use crate::{Acks, ConnectorError, Position, Sink, TransactionError, Transactions};

/// The pipeline's sink: outputs keep their input's key; a dead letter is
/// the input's bytes unchanged, with its position and the reason in
/// headers.
pub(crate) struct RdSink {
    writer: Writer,
    brokers: String,
    input_topic: String,
    output_topic: String,
    dlq_topic: Option<String>,
    limits: Limits,
    /// Exactly-once: the open transaction.
    transaction: Option<Transaction>,
    /// At least once: what was written since the last flush.
    chunk: Option<Chunk>,
    /// Exactly-once: how to make the producer again after it failed for
    /// good.
    remake: Option<Remake>,
}

/// The at-least-once sink's producer linger. Every batch the sink writes
/// ends in a flush, which sends at once whatever lingers, so the linger
/// only keeps librdkafka from sending the first records of a chunk
/// ([`Chunk`]) while the sink is still writing the rest of it: those would
/// go in a request of their own, and the rest wait behind it.
const SINK_LINGER_MS: u32 = 500;

/// At least once, the sink writes in chunks of at most one produce request
/// per partition, and flushes each before it writes the next. An
/// idempotent producer in librdkafka sends a partition's next request only
/// once the one before it is acknowledged (a request of five records or
/// more fills its window of in-flight requests), so a larger batch goes
/// out one request after the other anyway; and while records wait behind
/// a request whose linger has passed (during a flush, every record's),
/// librdkafka's broker thread polls its socket without sleeping, taking a
/// core from the workers and the broker until the answer comes. A chunk
/// keeps the wait and leaves the core.
///
/// Records to a partition fila names (a changelog's) count against that
/// partition; records partitioned by librdkafka (by key) against their
/// topic, as if spread evenly over its partitions, so a skewed key
/// distribution can still send some partition two requests in one chunk.
struct Chunk {
    request: RequestSize,
    /// By name. A sink writes to a handful of topics (the output, the
    /// dead letters, a changelog or repartition topic per keyed stage), so
    /// a scan that compares names costs a record less than hashing its
    /// topic's name would.
    topics: Vec<(String, Topic)>,
}

/// What a chunk holds of one topic.
#[derive(Default)]
struct Topic {
    /// The topic's partitions, once asked (on its first record partitioned
    /// by key).
    partitions: Option<usize>,
    /// Records librdkafka partitions.
    spread: Load,
    /// Records to a partition fila names.
    named: HashMap<i32, Load>,
}

#[derive(Default, Clone, Copy)]
struct Load {
    records: usize,
    bytes: usize,
}

impl Chunk {
    fn new(request: RequestSize) -> Chunk {
        Chunk {
            request,
            topics: Vec::new(),
        }
    }

    /// Counts a record of `bytes` (key, value and headers) to `topic`'s
    /// `partition`. Returns true when it would have overfilled the chunk:
    /// the chunk then starts again with this record alone, and the caller
    /// flushes what was written before it. `partitions` says how many
    /// partitions the topic has, asked once per topic.
    fn take(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        bytes: usize,
        partitions: impl FnOnce() -> usize,
    ) -> bool {
        let (request, size) = (self.request, bytes + RECORD_OVERHEAD);
        let t = self.topic(topic);
        let (load, room) = match partition {
            Some(p) => (t.named.entry(p).or_default(), 1),
            None => (&mut t.spread, *t.partitions.get_or_insert_with(partitions)),
        };
        let room = room.max(1);
        let full = load.records > 0
            && (load.records + 1 > request.records.saturating_mul(room)
                || load.bytes + size > request.bytes.saturating_mul(room));
        if !full {
            load.records += 1;
            load.bytes += size;
            return false;
        }
        self.flushed();
        let t = self.topic(topic);
        let load = match partition {
            Some(p) => t.named.entry(p).or_default(),
            None => &mut t.spread,
        };
        *load = Load {
            records: 1,
            bytes: size,
        };
        true
    }

    fn topic(&mut self, topic: &str) -> &mut Topic {
        let at = match self.topics.iter().position(|(name, _)| name == topic) {
            Some(at) => at,
            None => {
                // A topic's name is copied on its first record only.
                self.topics.push((topic.to_owned(), Topic::default()));
                self.topics.len() - 1
            }
        };
        &mut self.topics[at].1
    }

    /// After a flush: nothing written since.
    fn flushed(&mut self) {
        for (_, t) in &mut self.topics {
            t.spread = Load::default();
            t.named.clear();
        }
    }
}

/// What making the transactional producer again takes, and when it was
/// last made again.
struct Remake {
    cluster: Cluster,
    retry_timeout: Duration,
    id: String,
    recent: VecDeque<Instant>,
}

/// How often the transactional producer may be made again within
/// [`REMAKE_WINDOW`]. A producer fails for good when the broker aborted its
/// transaction on a timeout and bumped its epoch (a stalled or restarted
/// coordinator), and that it outlives by starting over under the same id;
/// or when another process took over its id, which keeps happening, and
/// then fila stops rather than fence that process back.
const MAX_REMAKES: usize = 3;
const REMAKE_WINDOW: Duration = Duration::from_secs(300);

/// A transactional producer with id `id`, its earlier incarnations fenced
/// (what they left open is aborted), and a transaction begun.
fn transactional_writer(
    cluster: &Cluster,
    retry_timeout: Duration,
    id: &str,
) -> Result<Writer, ConnectorError> {
    let brokers = cluster.brokers.as_str();
    let producer = producer_with(cluster, 1, retry_timeout, None, Some(id))?;
    let writer = Writer::new(producer, brokers, retry_timeout);
    writer
        .producer
        .init_transactions(LOOKUP_TIMEOUT + Duration::from_secs(15))
        .map_err(|e| kafka_error(brokers, &format!("starting transactions as {id}"), e))?;
    writer
        .producer
        .begin_transaction()
        .map_err(|e| kafka_error(brokers, "beginning a transaction", e))?;
    Ok(writer)
}

/// [`transactional_writer`], after the producer failed for good: the
/// broker that made it fail may not answer yet (a restart takes its time),
/// so failed attempts are a run of transient failures like any client's
/// ([`Outage`]): retried with its backoff, until the retry timeout. Records
/// wait meanwhile; none is lost, since the driver rewinds to the last
/// commit afterwards.
fn make_again(
    cluster: &Cluster,
    retry_timeout: Duration,
    id: &str,
) -> Result<Writer, ConnectorError> {
    let outage = Outage::new(&cluster.brokers, retry_timeout);
    loop {
        match transactional_writer(cluster, retry_timeout, id) {
            Ok(writer) => {
                outage.succeeded();
                return Ok(writer);
            }
            Err(e) => {
                outage.failed(&format!(
                    "making the transactional producer {id} again: {}",
                    error_chain(&e)
                ));
                outage.check()?;
                std::thread::sleep(outage.backoff());
            }
        }
    }
}

impl RdSink {
    pub fn connect(config: &SinkConfig) -> Result<RdSink, ConnectorError> {
        let brokers = config.cluster.brokers.as_str();
        let limits = Limits::of(config)?;
        let cluster = limits.batches_in(&config.cluster)?;
        let producer = producer(&cluster, SINK_LINGER_MS, config.retry_timeout, None)?;
        let mut chunk = Chunk::new(RequestSize::of(&cluster)?);
        for (topic, partitions) in &limits.partitions {
            chunk.topic(topic).partitions = Some(*partitions);
        }
        Ok(RdSink {
            writer: Writer::new(producer, brokers, config.retry_timeout),
            brokers: brokers.to_owned(),
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            limits,
            transaction: None,
            chunk: Some(chunk),
            remake: None,
        })
    }

    /// The sink of an exactly-once pipeline reading with `source`: one
    /// transactional producer, its transactions committed with `source`'s
    /// group metadata. Its transactional id is the group's and input's
    /// and, with a static assignment, the replica's: a restarted replica
    /// fences the process it replaces at once.
    pub(super) fn transactional(
        config: &SinkConfig,
        source: &RdSource,
        link: Arc<Link>,
    ) -> Result<RdSink, ConnectorError> {
        let brokers = config.cluster.brokers.as_str();
        let id = source.transactional_id();
        let limits = Limits::of(config)?;
        let cluster = limits.batches_in(&config.cluster)?;
        let writer = transactional_writer(&cluster, config.retry_timeout, &id)?;
        tracing::info!(transactional_id = %id, "writing in transactions");
        Ok(RdSink {
            writer,
            brokers: brokers.to_owned(),
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            limits,
            chunk: None,
            // The offsets committed are the source's own topic's,
            // whatever the sink calls its input.
            transaction: Some(Transaction::new(
                source.consumer(),
                source.topic().to_owned(),
                link,
            )),
            remake: Some(Remake {
                cluster,
                retry_timeout: config.retry_timeout,
                id,
                recent: VecDeque::new(),
            }),
        })
    }

    /// After the producer failed for good with `cause`: makes it again
    /// under the same id, which aborts what the failed one left open. The
    /// driver then rewinds, as after an abort. Refused past
    /// [`MAX_REMAKES`] in [`REMAKE_WINDOW`].
    fn remake(&mut self, cause: ConnectorError) -> Result<(), ConnectorError> {
        let Some(remake) = &mut self.remake else {
            return Err(cause);
        };
        let now = Instant::now();
        remake
            .recent
            .retain(|&at| now.saturating_duration_since(at) < REMAKE_WINDOW);
        if remake.recent.len() >= MAX_REMAKES {
            tracing::error!(
                transactional_id = %remake.id,
                "the transactional producer failed for good {MAX_REMAKES} times within \
                 {REMAKE_WINDOW:?}: another process may be writing as this id"
            );
            return Err(cause);
        }
        remake.recent.push_back(now);
        let cause_text = error_chain(&cause);
        tracing::warn!(
            transactional_id = %remake.id,
            "the transactional producer failed for good ({cause_text}); making it again: what \
             it left open is aborted, and the records since the last commit run again"
        );
        let writer = make_again(&remake.cluster, remake.retry_timeout, &remake.id)?;
        let failed = std::mem::replace(&mut self.writer, writer);
        // Its drop waits for what it still holds to settle; not here.
        let _ = std::thread::Builder::new()
            .name("fila-producer-drop".into())
            .spawn(move || drop(failed));
        if let Some(t) = &mut self.transaction {
            t.sent = false;
        }
        Ok(())
    }

    fn sent(&mut self) {
        if let Some(t) = &mut self.transaction {
            t.sent = true;
        }
    }
}

/// The largest records the sink's topics take.
struct Limits {
    /// The dead-letter topic's: the smaller of its `max.message.bytes`
    /// and the producer's `message.max.bytes`. When the topic's cannot be
    /// learned (a cluster that does not let fila describe topics), the
    /// broker's default: a letter cut for nothing beats a run stopped.
    dlq: usize,
    /// The largest output: the output topic's limit, the same way; when
    /// the topic's cannot be learned, or the producer compresses (the
    /// topic's limit holds for a compressed batch), the producer's alone:
    /// no output is refused for a limit guessed.
    output: usize,
    /// The output topic's limit whatever the producer does, which its
    /// batches keep to (`batch.size` counts them before compression).
    output_topic: usize,
    /// The output and dead-letter topics' partition counts, as made sure
    /// of.
    partitions: Vec<(String, usize)>,
}

impl Limits {
    /// Makes the output and dead-letter topics if they do not exist, and
    /// asks them for their limits.
    fn of(config: &SinkConfig) -> Result<Limits, ConnectorError> {
        let cluster = &config.cluster;
        let brokers = cluster.brokers.as_str();
        // The first call to the cluster: a broker that cannot be reached
        // is named at once, not after a look-up's timeout.
        preflight(cluster)?;
        let producer_limit = max_record_bytes(cluster)?;
        let admin = admin_client(cluster)?;
        let mut partitions = Vec::new();
        let mut limit_of = |topic: &str| -> Result<Result<usize, String>, ConnectorError> {
            let made = ensure_topic(admin.inner(), brokers, topic)?.len();
            partitions.push((topic.to_owned(), made));
            Ok(
                match topic_config(&admin, brokers, topic, "max.message.bytes") {
                    Ok(Some(value)) => value
                        .parse::<usize>()
                        .map_err(|e| format!("{value:?}: {e}")),
                    Ok(None) => Err("the broker did not name it".to_owned()),
                    Err(e) => Err(error_chain(&e)),
                },
            )
        };
        let compressed = ["compression.type", "compression.codec"].iter().any(|key| {
            cluster
                .properties
                .get(key)
                .is_some_and(|v| !v.eq_ignore_ascii_case("none"))
        });
        let output_topic = limit_of(&config.output_topic)?.unwrap_or_else(|why| {
            tracing::warn!(
                topic = config.output_topic,
                "the output topic's max.message.bytes is unknown ({why})"
            );
            producer_limit
        });
        let dlq = match &config.dlq_topic {
            None => producer_limit,
            Some(topic) => limit_of(topic)?.unwrap_or_else(|why| {
                tracing::warn!(
                    topic,
                    "the dead-letter topic's max.message.bytes is unknown ({why}); dead \
                     letters are cut to the broker default's {BROKER_DEFAULT_RECORD_LIMIT} bytes"
                );
                BROKER_DEFAULT_RECORD_LIMIT
            }),
        };
        Ok(Limits {
            dlq: dlq.min(producer_limit),
            output: if compressed {
                producer_limit
            } else {
                output_topic.min(producer_limit)
            },
            output_topic: output_topic.min(producer_limit),
            partitions,
        })
    }

    /// `cluster` with the producer's batches no larger than either topic
    /// takes.
    fn batches_in(&self, cluster: &Cluster) -> Result<Cluster, ConnectorError> {
        batch_at_most(cluster, room(self.dlq.min(self.output_topic)))
    }
}

/// At least once (`chunk` is there): before a record of `bytes` to
/// `topic`'s `partition` is written, counts it, and flushes what was
/// written before it if it would have overfilled the chunk.
fn fit(
    chunk: &mut Option<Chunk>,
    writer: &Writer,
    topic: &str,
    partition: Option<i32>,
    bytes: usize,
) -> Result<(), ConnectorError> {
    let Some(chunk) = chunk.as_mut() else {
        return Ok(());
    };
    let client = writer.producer.client();
    if chunk.take(topic, partition, bytes, || partition_count(client, topic)) {
        writer.flush()?;
    }
    Ok(())
}

/// How many partitions `topic` has, as the producer's metadata says; 1
/// when it cannot tell, which only makes chunks to it smaller.
fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> usize {
    match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(1, |t| t.partitions().len().max(1)),
        Err(e) => {
            tracing::debug!(
                topic,
                "partitions unknown ({e}); writing it one request a chunk"
            );
            1
        }
    }
}

impl Transactions for RdSink {
    fn abort_requested(&self) -> bool {
        self.transaction
            .as_ref()
            .is_some_and(Transaction::abort_requested)
    }

    fn commit(&mut self, acks: &Acks) -> Result<bool, TransactionError> {
        let committed = match &mut self.transaction {
            Some(t) => t.commit(&self.writer, acks, &self.brokers),
            None => Ok(false),
        };
        match committed {
            Err(TransactionError::Fatal(cause)) => {
                let reason = format!("the producer was made again after: {}", error_chain(&cause));
                self.remake(cause).map_err(TransactionError::Fatal)?;
                // The driver aborts (the new producer's empty transaction)
                // and rewinds.
                Err(TransactionError::Abort(reason))
            }
            other => other,
        }
    }

    fn abort(&mut self) -> Result<(), ConnectorError> {
        let aborted = match &mut self.transaction {
            Some(t) => t.abort(&self.writer, &self.brokers),
            None => Ok(()),
        };
        if let Err(cause) = aborted {
            // Making the producer again aborts what it left open.
            self.remake(cause)?;
            if let Some(t) = &mut self.transaction {
                t.link_aborted();
            }
        }
        Ok(())
    }
}

impl Sink for RdSink {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.sent();
        let bytes = key.map_or(0, <[u8]>::len) + payload.len();
        fit(
            &mut self.chunk,
            &self.writer,
            &self.output_topic,
            None,
            bytes,
        )?;
        write(
            &self.writer,
            &mut self.transaction,
            &self.brokers,
            (&self.output_topic, None),
            key,
            Some(payload),
            None,
        )
    }

    fn dead_letter(
        &mut self,
        position: Position,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        self.sent();
        let topic = self.dlq_topic.as_deref().unwrap_or(&self.output_topic);
        // A key that would leave the payload little room in a letter that
        // does not fit is left out: the letter's headers name the record.
        let room = room(self.limits.dlq);
        let without_key;
        let (key, reason) = match key {
            Some(k) if k.len() > room / 4 && k.len() + payload.len() + reason.len() > room => {
                // The reason is cut here, so that the note stays whole.
                without_key = format!(
                    "{} (the dead letter leaves out the record's key of {} bytes: its \
                     topic takes records of at most {} bytes)",
                    prefix(reason, reason_room(self.limits.dlq) / 2),
                    k.len(),
                    self.limits.dlq
                );
                (None, without_key.as_str())
            }
            _ => (key, reason),
        };
        let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
        let mut headers = [
            (DLQ_TOPIC_HEADER, self.input_topic.as_bytes()),
            (DLQ_PARTITION_HEADER, partition.as_bytes()),
            (DLQ_OFFSET_HEADER, offset.as_bytes()),
            (DLQ_REASON_HEADER, b"".as_slice()),
        ];
        let rest = key.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let cut = cut_to_fit(payload.len(), rest, reason, self.limits.dlq);
        let (payload, reason) = match &cut {
            Some((kept, noted)) => (&payload[..*kept], noted.as_str()),
            None => (payload, reason),
        };
        if cut.is_some() {
            tracing::warn!(
                partition = position.partition,
                offset = position.offset,
                "dead letter cut to fit {topic}: {reason}"
            );
        }
        headers[3].1 = reason.as_bytes();
        let bytes = rest + reason.len() + payload.len();
        fit(&mut self.chunk, &self.writer, topic, None, bytes)?;
        let headers =
            headers
                .into_iter()
                .fold(OwnedHeaders::new_with_capacity(4), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
        write(
            &self.writer,
            &mut self.transaction,
            &self.brokers,
            (topic, None),
            key,
            Some(payload),
            Some(headers),
        )
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        let flushed = self.writer.flush();
        if let Some(chunk) = &mut self.chunk {
            chunk.flushed();
        }
        flushed
    }

    fn has_dead_letter_destination(&self) -> bool {
        self.dlq_topic.is_some()
    }

    fn output_limit(&self) -> Option<usize> {
        Some(room(self.limits.output))
    }

    fn send_to(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), ConnectorError> {
        self.sent();
        let bytes = key.len() + value.map_or(0, <[u8]>::len);
        fit(&mut self.chunk, &self.writer, topic, partition, bytes)?;
        write(
            &self.writer,
            &mut self.transaction,
            &self.brokers,
            (topic, partition),
            Some(key),
            value,
            None,
        )
    }

    fn transactions(&mut self) -> Option<&mut dyn Transactions> {
        match self.transaction {
            Some(_) => Some(self),
            None => None,
        }
    }
}

/// Sends one record with `writer`. Under exactly-once, librdkafka refuses
/// records once the open transaction has failed in a way that needs an
/// abort (an abortable error, such as a sequence gap after a broker
/// restart): the record is then left out, and the transaction is marked to
/// abort at the next commit, whose rewind runs the record again.
fn write(
    writer: &Writer,
    transaction: &mut Option<Transaction>,
    brokers: &str,
    (topic, partition): (&str, Option<i32>),
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<(), ConnectorError> {
    match (
        writer.try_send(topic, key, payload, headers, partition),
        transaction,
    ) {
        (Ok(()), _) => Ok(()),
        (Err(KafkaError::MessageProduction(RDKafkaErrorCode::State)), Some(t)) => {
            t.doom(format!(
                "producing to {topic}: the transaction is in an error state"
            ));
            Ok(())
        }
        (Err(e), _) => Err(kafka_error(brokers, &format!("producing to {topic}"), e)),
    }
}

/// An error with its causes, on one line.
fn error_chain(e: &ConnectorError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Drop for RdSink {
    fn drop(&mut self) {
        if let Some(t) = &self.transaction {
            // Whatever the driver did not commit stays uncommitted: the
            // broker aborts it when the producer goes, or when its
            // transaction times out.
            t.link.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    const REQUEST: RequestSize = RequestSize {
        records: 4,
        bytes: 1_000,
    };

    #[test]
    fn a_chunk_holds_one_request_per_partition_and_starts_again_after_a_flush() {
        let mut chunk = Chunk::new(REQUEST);
        let mut asked = 0;
        // Keyed records to a topic of two partitions: room for two
        // requests of four records.
        for _ in 0..8 {
            let full = chunk.take("out", None, 10, || {
                asked += 1;
                2
            });
            assert!(!full);
        }
        // A partition fila names has one request's room, whatever the
        // topic's size, and a count of its own.
        for _ in 0..4 {
            assert!(!chunk.take("changelog", Some(3), 10, || unreachable!()));
        }
        assert!(!chunk.take("changelog", Some(4), 10, || unreachable!()));
        assert!(chunk.take("changelog", Some(3), 10, || unreachable!()));
        // The chunk started again with that record alone: every other
        // count is back to nothing.
        for _ in 0..3 {
            assert!(!chunk.take("changelog", Some(3), 10, || unreachable!()));
        }
        assert!(chunk.take("changelog", Some(3), 10, || unreachable!()));
        for _ in 0..8 {
            assert!(!chunk.take("out", None, 10, || unreachable!()));
        }
        assert!(chunk.take("out", None, 10, || unreachable!()));
        assert_eq!(asked, 1, "a topic's partitions are asked once");
        // A flush from outside empties it too.
        chunk.flushed();
        for _ in 0..8 {
            assert!(!chunk.take("out", None, 10, || unreachable!()));
        }
    }

    #[test]
    fn a_chunk_counts_bytes_with_each_records_framing() {
        let mut chunk = Chunk::new(REQUEST);
        chunk.topic("out").partitions = Some(1);
        let record = 500 - RECORD_OVERHEAD;
        assert!(!chunk.take("out", None, record, || unreachable!()));
        assert!(!chunk.take("out", None, record, || unreachable!()));
        assert!(chunk.take("out", None, 1, || unreachable!()));
        // A record larger than a request still goes, alone in its chunk.
        chunk.flushed();
        assert!(!chunk.take("out", None, 5_000, || unreachable!()));
        assert!(chunk.take("out", None, 1, || unreachable!()));
    }

    /// What `write` relies on: once the open transaction has failed
    /// and needs an abort, librdkafka refuses further records with a state
    /// error. librdkafka's mock cluster answers slower than the delivery
    /// timeout, so a record times out, which fails the transaction as a
    /// stalled broker does.
    #[test]
    fn a_record_sent_into_a_failed_transaction_is_refused_with_a_state_error() {
        let mock = MockCluster::new(1).unwrap();
        let brokers = mock.bootstrap_servers();
        mock.create_topic("out", 1, 1).unwrap();
        let cluster = Cluster::new(brokers, Default::default());
        let writer = transactional_writer(&cluster, Duration::from_secs(1), "txn").unwrap();
        mock.broker_round_trip_time(1, Duration::from_secs(3))
            .unwrap();
        writer
            .try_send("out", None, Some(b"first"), None, None)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match writer.try_send("out", None, Some(b"next"), None, None) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::State)) => break,
                Ok(()) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => panic!("expected a state error, got {other:?}"),
            }
        }
    }
}
