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

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::config::kafka_error;
use super::lock;
use super::produce::Writer;
use super::source::SourceContext;
use crate::kafka::error;
use crate::{Acks, ConnectorError, TransactionError};

/// How long a transaction may stay open before the broker aborts it, and
/// a record may wait for delivery. A process that crashed with a
/// transaction open holds back readers of its outputs for at most this
/// long, unless its successor takes over its transactional id sooner.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a commit or an abort may take on the client's side.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl Transaction {
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
            retrying(brokers, "sending offsets to the transaction", || {
                producer.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)
            })?;
        }
        retrying(brokers, "committing the transaction", || {
            producer.commit_transaction(CALL_TIMEOUT)
        })?;
        tracing::debug!(?offsets, "transaction committed");
        acks.mark_committed(&offsets);
        writer.forget_failures();
        producer
            .begin_transaction()
            .map_err(|e| fatal(brokers, "beginning a transaction", e))?;
        self.sent = false;
        Ok(true)
    }

    /// The open transaction was given up some other way (its producer
    /// made again): tells a revocation waiting on it.
    pub(crate) fn link_aborted(&mut self) {
        self.sent = false;
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
        self.link.aborted();
        Ok(())
    }
}

fn fatal(brokers: &str, what: &str, e: KafkaError) -> TransactionError {
    TransactionError::Fatal(kafka_error(brokers, what, e))
}

/// Runs `call` until it succeeds, retrying what librdkafka calls
/// retriable for up to [`CALL_TIMEOUT`]; sorts what fails into an abort
/// (the transaction can be given up and the work done again) or a fatal
/// error (the producer cannot go on).
fn retrying(
    brokers: &str,
    what: &str,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), TransactionError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let e = match call() {
            Ok(()) => return Ok(()),
            Err(e) => e,
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
