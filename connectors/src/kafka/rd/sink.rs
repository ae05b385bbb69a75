//! The pipeline's sink: outputs to the output topic, dead letters with
//! their position and reason in headers.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;

use super::admin::ensure_topic;
use super::produce::{producer, Writer};
use crate::kafka::dead_letter::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use crate::kafka::SinkConfig;
use crate::{ConnectorError, Position, Sink};

/// The pipeline's sink: outputs keep their input's key; a dead letter is
/// the input's bytes unchanged, with its position and the reason in
/// headers.
pub(crate) struct RdSink {
    writer: Writer,
    input_topic: String,
    output_topic: String,
    dlq_topic: Option<String>,
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
            input_topic: config.input_topic.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
        })
    }
}

impl Sink for RdSink {
    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
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
}
