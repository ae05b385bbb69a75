//! The producer and its delivery reports, and the writer the sink and the
//! tools send through, which serves those reports on a thread of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::config::{client_config, kafka_error, preflight, Defaults, Logging, Rebootstrap};
use super::lock;
use super::transaction::TRANSACTION_TIMEOUT;
use crate::kafka::{error, Cluster};
use crate::ConnectorError;

/// How much longer than the retry timeout a flush waits for librdkafka's
/// last delivery report before it calls the producer stuck.
const FLUSH_SLACK: Duration = Duration::from_secs(30);

/// How long the producer's poll thread waits in one poll; it checks for
/// its stop this often.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Counts the records sent and not yet reported delivered (or failed),
/// and keeps the first failure. librdkafka's delivery callbacks run on the
/// writer's poll thread.
pub(super) struct DeliveryContext {
    /// The records sent and not yet reported: the sending thread adds one
    /// per record and the poll thread takes one per report, with no lock
    /// between them.
    pending: AtomicU64,
    /// Held by a waiter while it looks at `pending`, and by the report
    /// that brings it to zero before it notifies `settled`, so the waiter
    /// cannot miss that notification.
    settling: Mutex<()>,
    /// Notified when `pending` reaches zero.
    settled: Condvar,
    failed: Mutex<Option<String>>,
    /// Set once the idempotent producer has its producer id, as its
    /// statistics say (when they are turned on).
    ready: Mutex<bool>,
    /// Notified when `ready` is set.
    readied: Condvar,
    logging: Logging,
}

impl DeliveryContext {
    fn new(brokers: &str, retry_timeout: Duration) -> DeliveryContext {
        DeliveryContext {
            pending: AtomicU64::new(0),
            settling: Mutex::new(()),
            settled: Condvar::new(),
            failed: Mutex::new(None),
            ready: Mutex::new(false),
            readied: Condvar::new(),
            logging: Logging::new(brokers, retry_timeout),
        }
    }

    /// Waits until the producer has its producer id, or `timeout` passes.
    pub(super) fn wait_ready(&self, timeout: Duration) -> bool {
        let ready = lock(&self.ready);
        let (ready, _) = self
            .readied
            .wait_timeout_while(ready, timeout, |r| !*r)
            .unwrap_or_else(|p| p.into_inner());
        *ready
    }

    fn settle_one(&self) {
        // AcqRel: a waiter that sees the count it leaves also sees what
        // this report recorded before it (a failure).
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _settling = lock(&self.settling);
            self.settled.notify_all();
        }
    }

    /// Waits until every record sent is reported, or `timeout` passes;
    /// returns how many are still not reported.
    fn wait_settled(&self, timeout: Duration) -> u64 {
        let settling = lock(&self.settling);
        let _settling = self
            .settled
            .wait_timeout_while(settling, timeout, |_| {
                self.pending.load(Ordering::Acquire) > 0
            })
            .unwrap_or_else(|p| p.into_inner());
        self.pending.load(Ordering::Acquire)
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logging.log(level, fac, message)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics
            .eos
            .is_some_and(|eos| eos.idemp_state == "Assigned")
        {
            *lock(&self.ready) = true;
            self.readied.notify_all();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logging.error(error, reason)
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.logging.outage.succeeded();
        }
        if let Err((e, m)) = result {
            let mut failed = lock(&self.failed);
            if failed.is_none() {
                *failed = Some(format!(
                    "producing to {} partition {}: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
        // After the failure is recorded, so a flush that wakes sees it.
        self.settle_one();
    }
}

/// The largest record fila produces: above the broker's default limit
/// (1 MiB), so a record the broker accepted on the input can go to the
/// dead-letter topic with its headers; the broker's own limit decides.
const MAX_RECORD_BYTES: usize = 8 << 20;

/// What librdkafka frames a record in, at most, besides its key, value
/// and headers (a v2 record's length, attributes, timestamp and offset
/// deltas, and the lengths of its parts).
pub(super) const RECORD_OVERHEAD: usize = 36;

/// What a produce request's and its record batch's own headers take of
/// `batch.size`, at most (the request header, the topic's name, the batch
/// header), rounded up.
const REQUEST_FRAMING: usize = 1024;

/// The most one produce request carries to one partition, as the user's
/// client properties leave librdkafka configured: `batch.num.messages`
/// records, and `batch.size` bytes (or `message.max.bytes`, if smaller)
/// less [`REQUEST_FRAMING`], counting each record's key, value, headers
/// and [`RECORD_OVERHEAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RequestSize {
    pub(super) records: usize,
    pub(super) bytes: usize,
}

impl RequestSize {
    pub(super) fn of(cluster: &Cluster) -> Result<RequestSize, ConnectorError> {
        Ok(RequestSize::from_config(&client_config(cluster)?))
    }

    fn from_config(config: &rdkafka::config::ClientConfig) -> RequestSize {
        // librdkafka's defaults, and fila's for message.max.bytes.
        RequestSize {
            records: setting(config, "batch.num.messages", 10_000),
            bytes: setting(config, "batch.size", 1_000_000)
                .min(setting(config, "message.max.bytes", MAX_RECORD_BYTES))
                .saturating_sub(REQUEST_FRAMING)
                .max(1),
        }
    }
}

/// The largest record the producer sends (`message.max.bytes`, fila's
/// default unless the user's client properties set it).
pub(super) fn max_record_bytes(cluster: &Cluster) -> Result<usize, ConnectorError> {
    Ok(setting(
        &client_config(cluster)?,
        "message.max.bytes",
        MAX_RECORD_BYTES,
    ))
}

/// `cluster` with the producer's `batch.size` at most `bytes`: a batch
/// to a topic is refused whole when it is over the topic's limit, and
/// librdkafka does not split it. (A record alone over `batch.size` still
/// goes, in a batch of its own.)
pub(super) fn batch_at_most(cluster: &Cluster, bytes: usize) -> Result<Cluster, ConnectorError> {
    let batch = setting(&client_config(cluster)?, "batch.size", 1_000_000);
    let mut capped = cluster.clone();
    if bytes < batch {
        tracing::info!(
            batch_size = bytes,
            "batches made smaller than batch.size ({batch}) to fit a topic's max.message.bytes"
        );
        capped
            .properties
            .set("batch.size", bytes.max(1).to_string());
    }
    Ok(capped)
}

/// A positive number the client properties set for `key`, or `default`.
fn setting(config: &rdkafka::config::ClientConfig, key: &str, default: usize) -> usize {
    config
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// A producer that waits for every replica (`acks=all`) and never writes
/// a record twice on a retry (idempotence). librdkafka retries a record
/// through broker restarts for up to `retry_timeout`, then reports it
/// failed.
pub(super) fn producer(
    cluster: &Cluster,
    linger_ms: u32,
    retry_timeout: Duration,
    stats_every: Option<Duration>,
) -> Result<BaseProducer<DeliveryContext>, ConnectorError> {
    producer_with(cluster, linger_ms, retry_timeout, stats_every, None)
}

/// [`producer`], transactional with `transactional_id` when given: then a
/// record waits for delivery at most as long as its transaction may stay
/// open ([`TRANSACTION_TIMEOUT`]).
pub(super) fn producer_with(
    cluster: &Cluster,
    linger_ms: u32,
    retry_timeout: Duration,
    stats_every: Option<Duration>,
    transactional_id: Option<&str>,
) -> Result<BaseProducer<DeliveryContext>, ConnectorError> {
    let brokers = cluster.brokers.as_str();
    preflight(cluster)?;
    let mut config = client_config(cluster)?;
    if let Some(every) = stats_every {
        config.set("statistics.interval.ms", every.as_millis().to_string());
    }
    let message_timeout = match transactional_id {
        Some(id) => {
            config.set("transactional.id", id).set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            );
            TRANSACTION_TIMEOUT.min(retry_timeout)
        }
        None => retry_timeout,
    };
    config
        .default_to("linger.ms", linger_ms.to_string())
        .default_to("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .create_with_context(DeliveryContext::new(brokers, retry_timeout))
        .map_err(|e| kafka_error(brokers, "creating the producer", e))
}

/// A producer with a thread of its own that serves librdkafka's delivery
/// reports as they come, so a flush sleeps until the last one instead of
/// polling. (`Producer::flush` waits in steps of 100 ms, and a poll with a
/// timeout under a millisecond spins.)
pub(super) struct Writer {
    pub(super) producer: Arc<BaseProducer<DeliveryContext>>,
    brokers: String,
    /// How long a flush waits for the last delivery report: librdkafka
    /// reports every record by then (`message.timeout.ms` is the retry
    /// timeout), so a wait past it means the client is stuck.
    flush_bound: Duration,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn new(
        producer: BaseProducer<DeliveryContext>,
        brokers: &str,
        retry_timeout: Duration,
    ) -> Writer {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            let brokers = brokers.to_owned();
            std::thread::Builder::new()
                .name("fila-produce".into())
                .spawn(move || {
                    let mut rebootstrap = Rebootstrap::new("writer");
                    // Relaxed: the flag only ends the loop; nothing is
                    // published through it.
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_INTERVAL);
                        // Only a delivery ends the writer's outage, so an
                        // idle writer's lasts until it writes again: it is
                        // given its brokers again only while it holds
                        // records that are not delivered.
                        let context = producer.context();
                        let outage = &context.logging.outage;
                        if outage.is_failing() && context.pending.load(Ordering::Relaxed) > 0 {
                            rebootstrap.maybe(producer.client(), outage, &brokers);
                        }
                    }
                })
                .expect("spawning the producer's poll thread")
        };
        Writer {
            producer,
            brokers: brokers.to_owned(),
            flush_bound: retry_timeout + FLUSH_SLACK,
            stop,
            poller: Some(poller),
        }
    }

    pub(super) fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) -> Result<(), ConnectorError> {
        self.try_send(topic, key, Some(payload), headers, partition)
            .map_err(|e| kafka_error(&self.brokers, &format!("producing to {topic}"), e))
    }

    /// [`Writer::send`], with librdkafka's error as it came, and with no
    /// payload at all for a tombstone (`None`).
    pub(super) fn try_send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let context = self.producer.context();
        // Counted before the send: its delivery report may come first.
        context.pending.fetch_add(1, Ordering::Relaxed);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: the poll thread frees room
                    // as reports come in.
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    context.settle_one();
                    return Err(e);
                }
            }
        }
    }

    /// Waits until every record sent is reported, delivered or failed, or
    /// `timeout` passes.
    pub(super) fn settle(&self, timeout: Duration) {
        self.producer.context().wait_settled(timeout);
    }

    /// Waits, up to `bound`, until librdkafka holds nothing this producer
    /// sent: every delivery report served, the last one's message freed.
    ///
    /// For a commit: the client library's `commit_transaction` first
    /// flushes, and its flush, finding anything outstanding, polls for up to
    /// 100 ms. The reports go to this writer's poll thread, not to that
    /// poll, so one record still in flight cost a commit the whole 100 ms.
    /// Once the wait ends within its bound, that flush finds nothing and
    /// returns at once. A message is freed just after its report is
    /// served, so the short spin after [`Writer::settle`] covers only that
    /// gap; past the bound the commit goes on, and its flush waits as it
    /// would have.
    pub(super) fn drain(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        self.settle(bound);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Sends what lingers at once, and waits up to `bound` until
    /// librdkafka holds no record: librdkafka's own flush, which treats the
    /// linger as over while it lasts. Delivery reports come as events
    /// here, served by the poll thread, so this flush only sleeps on
    /// librdkafka's count of the records it holds.
    fn send_lingering(&self, bound: Duration) {
        let ms = i32::try_from(bound.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the pointer is this writer's producer's, which lives as
        // long as `self`; librdkafka's flush may be called from any thread.
        // What it returns (whether it timed out) the caller learns from
        // the count of records not yet reported.
        unsafe { rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), ms) };
    }

    /// Forgets failed deliveries: after a transaction ended, they belong to
    /// it (a commit that succeeded had none; an abort's purge reports them
    /// all).
    pub(super) fn forget_failures(&self) {
        lock(&self.producer.context().failed).take();
    }

    /// Returns once everything sent is acknowledged, or the first failure.
    /// librdkafka reports a record failed after `message.timeout.ms` (the
    /// retry timeout) of retries; if no report comes for longer than that,
    /// the flush fails rather than wait for ever.
    pub(super) fn flush(&self) -> Result<(), ConnectorError> {
        let context = self.producer.context();
        let deadline = Instant::now() + self.flush_bound;
        self.send_lingering(self.flush_bound);
        let left = context.wait_settled(deadline.saturating_duration_since(Instant::now()));
        if left > 0 {
            return Err(error(
                &self.brokers,
                format!(
                    "{left} records were neither acknowledged nor reported failed within {:?}",
                    self.flush_bound
                ),
            ));
        }
        match lock(&context.failed).take() {
            Some(failure) => Err(error(&self.brokers, failure)),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping a producer purges what it still holds: say so if
        // anything was left, rather than lose it silently.
        let bound = Duration::from_secs(30);
        let deadline = Instant::now() + bound;
        self.send_lingering(bound);
        let left = self
            .producer
            .context()
            .wait_settled(deadline.saturating_duration_since(Instant::now()));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        if left > 0 {
            tracing::error!(
                brokers = %self.brokers,
                "{left} records were not acknowledged when the producer closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;

    #[test]
    fn a_request_holds_what_the_batch_settings_allow_less_its_framing() {
        let config = ClientConfig::new();
        assert_eq!(
            RequestSize::from_config(&config),
            RequestSize {
                records: 10_000,
                bytes: 1_000_000 - REQUEST_FRAMING,
            }
        );
        let mut config = ClientConfig::new();
        config
            .set("batch.num.messages", "500")
            .set("batch.size", "4000000")
            .set("message.max.bytes", "2000000");
        assert_eq!(
            RequestSize::from_config(&config),
            RequestSize {
                records: 500,
                bytes: 2_000_000 - REQUEST_FRAMING,
            }
        );
    }
}
