//! Exactly-once on librdkafka: one transactional producer per process
//! (KIP-447), whose transactions carry the outputs, the dead letters and
//! the input offsets, sent with the consumer group's metadata so that a
//! member whose partitions moved cannot commit them.
//!
//! The sink commits and aborts on the driver's sink thread, between
//! batches. A rebalance that takes partitions away runs on the source's
//! thread; it asks the sink to abort the open transaction (which may hold
//! outputs of those partitions past their last committed offset) and waits
//! for that before it lets the partitions go. The source then rewinds its
//! other partitions to their last commit, and their records run again.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::config::kafka_error;
use super::lock;
use super::produce::Writer;
use super::source::SourceContext;
use crate::bounded::{BoundedCall, Unanswered};
use crate::kafka::error;
use crate::{Acks, ConnectorError, TransactionError};

/// How long a transaction may stay open before the broker aborts it, and
/// a record may wait for delivery. A process that crashed with a
/// transaction open holds back readers of its outputs for at most this
/// long, unless its successor takes over its transactional id sooner.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `--commit-interval` exactly-once allows: each interval is
/// one transaction, which the broker aborts once it has been open for
/// [`TRANSACTION_TIMEOUT`]. Half of it leaves the other half for the
/// commit's own round trips on a slow broker.
pub const MAX_EXACTLY_ONCE_INTERVAL: Duration =
    Duration::from_secs(TRANSACTION_TIMEOUT.as_secs() / 2);

/// How long a commit or an abort may take on the client's side.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a commit waits for the records of its transaction to be
/// delivered before it calls the client library's commit, which then
/// waits for them itself (see [`Writer::drain`]). A delivery takes a round
/// trip to the broker; one that takes longer is a slow broker, and the
/// commit waits on it either way.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// How long the sink waits for the offsets to be sent to the transaction
/// before it gives the producer up. librdkafka caps that call at the
/// transaction timeout, except while it waits for the group coordinator:
/// a coordinator it holds for down, it waits for without bound until some
/// broker connection changes state, and after a broker restart or stall
/// none may change again. The producer is then made again, which aborts
/// its transaction; the stuck call keeps its thread until it returns.
const OFFSETS_BOUND: Duration = Duration::from_secs(TRANSACTION_TIMEOUT.as_secs() + 10);

/// The thread the offsets are sent to the transaction on.
const OFFSETS_THREAD: &str = "fila-txn-offsets";

/// How long a revocation waits for the sink to abort before it lets the
/// partitions go anyway (the sink aborts before its next commit all the
/// same).
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// What the source and the sink of one exactly-once pipeline share.
#[derive(Default)]
pub(crate) struct Link {
    state: Mutex<LinkState>,
    changed: Condvar,
}

#[derive(Default)]
struct LinkState {
    abort_requested: bool,
    aborts: u64,
    /// The sink is gone (the run ended): no transaction is open any more.
    closed: bool,
}

impl Link {
    /// From the source's thread: asks the sink to abort its open
    /// transaction, and waits until it has (or [`ABORT_WAIT`] passes).
    pub(crate) fn abort_and_wait(&self) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            return true;
        }
        let seen = state.aborts;
        state.abort_requested = true;
        let (state, _) = self
            .changed
            .wait_timeout_while(state, ABORT_WAIT, |s| s.aborts == seen && !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        state.aborts != seen || state.closed
    }

    /// The sink is gone: whatever it last left open was committed or
    /// aborted, and nothing more is written.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    fn requested(&self) -> bool {
        lock(&self.state).abort_requested
    }

    fn aborted(&self) {
        let mut state = lock(&self.state);
        state.abort_requested = false;
        state.aborts += 1;
        self.changed.notify_all();
    }
}

/// The sink's side: its producer's transaction, and what the offsets are
/// committed with.
pub(crate) struct Transaction {
    pub(crate) consumer: Arc<BaseConsumer<SourceContext>>,
    pub(crate) input_topic: String,
    pub(crate) link: Arc<Link>,
    /// Whether anything was sent since the last commit.
    pub(crate) sent: bool,
    /// Why the open transaction must abort, if a send found it failed.
    doomed: Option<String>,
    offsets_call: BoundedCall<KafkaResult<()>>,
}

impl Transaction {
    pub(crate) fn new(
        consumer: Arc<BaseConsumer<SourceContext>>,
        input_topic: String,
        link: Arc<Link>,
    ) -> Transaction {
        Transaction {
            consumer,
            input_topic,
            link,
            sent: false,
            doomed: None,
            offsets_call: BoundedCall::new(OFFSETS_THREAD),
        }
    }

    /// Commits what `writer` sent since the last commit with the offsets
    /// `acks` allows, and opens the next transaction; returns whether
    /// there was anything to commit. An empty one is not sent to the
    /// broker at all.
    pub(crate) fn commit(
        &mut self,
        writer: &Writer,
        acks: &Acks,
        brokers: &str,
    ) -> Result<bool, TransactionError> {
        if let Some(reason) = self.doomed.take() {
            return Err(TransactionError::Abort(error(brokers, reason).to_string()));
        }
        let offsets = acks.committable();
        if offsets.is_empty() && !self.sent {
            return Ok(false);
        }
        let producer = &writer.producer;
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::with_capacity(offsets.len());
            for &(partition, offset) in &offsets {
                tpl.add_partition_offset(&self.input_topic, partition, Offset::Offset(offset))
                    .map_err(|e| fatal(brokers, "listing offsets", e))?;
            }
            // Taken right before the send: with KIP-848 the member's epoch
            // is in it, and the broker wants it current.
            let group = self.consumer.group_metadata().ok_or_else(|| {
                TransactionError::Abort("the consumer has no group metadata yet".into())
            })?;
            let offsets = Offsets {
                tpl,
                group: Arc::new(group),
            };
            send_offsets(
                &mut self.offsets_call,
                producer,
                &offsets,
                CALL_TIMEOUT,
                OFFSETS_BOUND,
                brokers,
            )?;
        }
        writer.drain(DRAIN_BOUND);
        retrying(brokers, "committing the transaction", || {
            Ok(producer.commit_transaction(CALL_TIMEOUT))
        })?;
        tracing::debug!(topic = %self.input_topic, ?offsets, "transaction committed");
        acks.mark_committed(&offsets);
        self.consumer.context().purge_below(&offsets);
        writer.forget_failures();
        producer
            .begin_transaction()
            .map_err(|e| fatal(brokers, "beginning a transaction", e))?;
        self.sent = false;
        Ok(true)
    }

    /// A send found the open transaction failed: it must abort, and the
    /// next commit does that instead of committing.
    pub(crate) fn doom(&mut self, reason: String) {
        self.doomed.get_or_insert(reason);
    }

    /// The open transaction was given up some other way (its producer
    /// made again): tells a revocation waiting on it.
    pub(crate) fn link_aborted(&mut self) {
        self.sent = false;
        self.doomed = None;
        self.link.aborted();
    }

    pub(crate) fn abort_requested(&self) -> bool {
        self.link.requested()
    }

    /// Aborts the open transaction and opens the next, then tells a
    /// revocation waiting on it.
    pub(crate) fn abort(&mut self, writer: &Writer, brokers: &str) -> Result<(), ConnectorError> {
        let producer = &writer.producer;
        producer
            .abort_transaction(CALL_TIMEOUT)
            .map_err(|e| kafka_error(brokers, "aborting the transaction", e))?;
        // What was in flight comes back purged: none of it counts.
        writer.settle(CALL_TIMEOUT);
        writer.forget_failures();
        producer
            .begin_transaction()
            .map_err(|e| kafka_error(brokers, "beginning a transaction", e))?;
        self.sent = false;
        self.doomed = None;
        self.link.aborted();
        Ok(())
    }
}

fn fatal(brokers: &str, what: &str, e: KafkaError) -> TransactionError {
    TransactionError::Fatal(kafka_error(brokers, what, e))
}

/// The input offsets of a transaction and the group they belong to.
struct Offsets {
    tpl: TopicPartitionList,
    group: Arc<ConsumerGroupMetadata>,
}

/// Sends `offsets` to `producer`'s open transaction on `calls`' thread,
/// giving librdkafka `timeout` and waiting at most `bound` for each try. A
/// try that overruns the bound is fatal: the producer is left to its stuck
/// call, and `calls` starts a new thread for the next producer's.
fn send_offsets<C: ProducerContext + 'static>(
    calls: &mut BoundedCall<KafkaResult<()>>,
    producer: &Arc<BaseProducer<C>>,
    offsets: &Offsets,
    timeout: Duration,
    bound: Duration,
    brokers: &str,
) -> Result<(), TransactionError> {
    const WHAT: &str = "sending offsets to the transaction";
    let sent = retrying(brokers, WHAT, || {
        let (producer, tpl, group) = (producer.clone(), offsets.tpl.clone(), offsets.group.clone());
        calls.call(bound, move || {
            producer.send_offsets_to_transaction(&tpl, &group, timeout)
        })
    });
    if let Err(TransactionError::Fatal(_)) = &sent {
        *calls = BoundedCall::new(OFFSETS_THREAD);
    }
    sent
}

/// Runs `call` until it succeeds, retrying what librdkafka calls
/// retriable for up to [`CALL_TIMEOUT`]; sorts what fails into an abort
/// (the transaction can be given up and the work done again) or a fatal
/// error (the producer cannot go on, or a call made on a thread of its
/// own gave no answer).
fn retrying(
    brokers: &str,
    what: &str,
    mut call: impl FnMut() -> Result<KafkaResult<()>, Unanswered>,
) -> Result<(), TransactionError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let e = match call() {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(unanswered) => {
                let reason = format!(
                    "{what}: {unanswered}, past the client's own timeout; giving the producer up"
                );
                return Err(TransactionError::Fatal(error(brokers, reason)));
            }
        };
        if let KafkaError::Transaction(rd) = &e {
            if rd.is_fatal() {
                return Err(fatal(brokers, what, e));
            }
            if rd.is_retriable() && !rd.txn_requires_abort() && Instant::now() < deadline {
                tracing::debug!("{what}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        // Abortable, or a failed flush of the records sent (which carries
        // no flags): the transaction is given up and its work done again.
        let reason = error(brokers, format!("{what}: {e}")).to_string();
        return Err(TransactionError::Abort(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::{MockCluster, MockCoordinator};
    use rdkafka::producer::BaseRecord;

    /// librdkafka's own mock cluster, since the fault lies in the client:
    /// with the group coordinator held down, the client waits for it past
    /// the timeout it was given, and the sink must still get an answer.
    #[test]
    fn offsets_for_a_coordinator_that_stays_down_give_the_producer_up_within_the_bound() {
        let mock = MockCluster::new(3).unwrap();
        let brokers = mock.bootstrap_servers();
        mock.create_topic("in", 1, 3).unwrap();
        mock.create_topic("out", 1, 3).unwrap();
        mock.coordinator(MockCoordinator::Transaction("txn".into()), 1)
            .unwrap();
        mock.coordinator(MockCoordinator::Group("group".into()), 2)
            .unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("transactional.id", "txn")
            .create()
            .unwrap();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "group")
            .create()
            .unwrap();
        let producer = Arc::new(producer);
        producer.init_transactions(Duration::from_secs(10)).unwrap();
        producer.begin_transaction().unwrap();
        producer
            .send(BaseRecord::<(), _>::to("out").payload("x"))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 0, Offset::Offset(1))
            .unwrap();
        let offsets = Offsets {
            tpl,
            group: Arc::new(consumer.group_metadata().unwrap()),
        };
        let mut calls = BoundedCall::new(OFFSETS_THREAD);
        let (timeout, bound) = (Duration::from_millis(500), Duration::from_secs(2));

        // With the coordinator up, the offsets go through.
        send_offsets(&mut calls, &producer, &offsets, timeout, bound, &brokers).unwrap();

        mock.broker_down(2).unwrap();
        let asked = std::time::Instant::now();
        match send_offsets(&mut calls, &producer, &offsets, timeout, bound, &brokers) {
            Err(TransactionError::Fatal(e)) => {
                let text = e.to_string();
                assert!(text.contains("no answer within 2s"), "{text}");
                assert!(text.contains("giving the producer up"), "{text}");
            }
            // librdkafka sometimes answers at once instead, when the downed
            // broker's handle goes: an abortable error, which the sink
            // handles by aborting and rewinding. Either way it has its
            // answer within the bound.
            Err(TransactionError::Abort(text)) => {
                assert!(
                    text.contains("sending offsets to the transaction"),
                    "{text}"
                );
            }
            other => panic!("expected the producer given up or an abort, got {other:?}"),
        }
        assert!(
            asked.elapsed() < bound + Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        // The next producer's calls get a thread of their own, rather
        // than be refused while the stuck one waits.
        assert!(matches!(calls.call(bound, || Ok(())), Ok(Ok(()))));
    }
}
