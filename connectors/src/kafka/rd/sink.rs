//! The pipeline's sink: outputs to the output topic, dead letters with
//! their position and reason in headers.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;

use std::sync::Arc;
use std::time::Duration;

use super::admin::{ensure_topic, LOOKUP_TIMEOUT};
use super::config::kafka_error;
use super::produce::{producer, producer_with, Writer};
use super::source::RdSource;
use super::transaction::{Link, Transaction};
use crate::kafka::dead_letter::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use crate::kafka::SinkConfig;
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
    /// Exactly-once: the open transaction.
    transaction: Option<Transaction>,
}

impl RdSink {
    pub fn connect(config: &SinkConfig) -> Result<RdSink, ConnectorError> {
        let brokers = config.cluster.brokers.as_str();
        // The sink flushes after every batch, which sends at once; linger
        // only gathers what arrives while a flush is under way.
        let producer = producer(&config.cluster, 1, config.retry_timeout, None)?;
        for topic in std::iter::once(&config.output_topic).chain(&config.dlq_topic) {
            ensure_topic(producer.client(), brokers, topic)?;
        }
        Ok(RdSink {
            writer: Writer::new(producer, brokers, config.retry_timeout),
            brokers: brokers.to_owned(),
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            transaction: None,
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
        let producer = producer_with(&config.cluster, 1, config.retry_timeout, None, Some(&id))?;
        for topic in std::iter::once(&config.output_topic).chain(&config.dlq_topic) {
            ensure_topic(producer.client(), brokers, topic)?;
        }
        let writer = Writer::new(producer, brokers, config.retry_timeout);
        // Fences an earlier producer with this id, aborting what it left
        // open.
        writer
            .producer
            .init_transactions(LOOKUP_TIMEOUT + Duration::from_secs(15))
            .map_err(|e| kafka_error(brokers, &format!("starting transactions as {id}"), e))?;
        writer
            .producer
            .begin_transaction()
            .map_err(|e| kafka_error(brokers, "beginning a transaction", e))?;
        tracing::info!(transactional_id = %id, "writing in transactions");
        Ok(RdSink {
            writer,
            brokers: brokers.to_owned(),
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            transaction: Some(Transaction {
                consumer: source.consumer(),
                input_topic: config.input_topic.clone(),
                link,
                sent: false,
            }),
        })
    }

    fn sent(&mut self) {
        if let Some(t) = &mut self.transaction {
            t.sent = true;
        }
    }
}

impl Transactions for RdSink {
    fn abort_requested(&self) -> bool {
        self.transaction
            .as_ref()
            .is_some_and(Transaction::abort_requested)
    }

    fn commit(&mut self, acks: &Acks) -> Result<(), TransactionError> {
        match &mut self.transaction {
            Some(t) => t.commit(&self.writer, acks, &self.brokers),
            None => Ok(()),
        }
    }

    fn abort(&mut self) -> Result<(), ConnectorError> {
        match &mut self.transaction {
            Some(t) => t.abort(&self.writer, &self.brokers),
            None => Ok(()),
        }
    }
}

impl Sink for RdSink {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.sent();
        self.writer
            .send(&self.output_topic, key, payload, None, None)
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
        let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
        let headers = [
            (DLQ_TOPIC_HEADER, self.input_topic.as_bytes()),
            (DLQ_PARTITION_HEADER, partition.as_bytes()),
            (DLQ_OFFSET_HEADER, offset.as_bytes()),
            (DLQ_REASON_HEADER, reason.as_bytes()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(4), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        self.writer.send(topic, key, payload, Some(headers), None)
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.writer.flush()
    }

    fn has_dead_letter_destination(&self) -> bool {
        self.dlq_topic.is_some()
    }

    fn transactions(&mut self) -> Option<&mut dyn Transactions> {
        match self.transaction {
            Some(_) => Some(self),
            None => None,
        }
    }
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
