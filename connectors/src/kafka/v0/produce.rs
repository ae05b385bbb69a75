//! The writer the sink and the tools share: produces batches and waits
//! until every in-sync replica has them. What only the tools call of it
//! (`send_all`) is in [`tools`](super::tools).

use std::time::Duration;

use kafka::client::{FetchOffset, RequiredAcks};
use kafka::error::Error as KafkaError;
use kafka::producer::{Producer, Record};

use super::admin::{ensure_topic, offsets};
use super::config::{connect, explain, Failure};
use crate::ConnectorError;

/// Writes values to topics and waits until every in-sync replica has them.
pub(crate) struct TopicWriter {
    producer: Producer,
    pub(super) brokers: String,
}

/// Records per produce request.
const PRODUCE_BATCH: usize = 1000;

impl TopicWriter {
    /// Connects and makes sure every topic in `topics` exists.
    /// The brokers this writer writes to.
    pub(crate) fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn connect(brokers: &str, topics: &[&str]) -> Result<TopicWriter, ConnectorError> {
        let mut client = connect(brokers)?;
        for topic in topics {
            ensure_topic(&mut client, brokers, topic)?;
            // A topic just made can have its leaders in the metadata
            // before they take writes: asking each for its end offset
            // waits (bounded) until they answer.
            offsets(&mut client, brokers, topic, FetchOffset::Latest)?;
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

    pub(super) fn try_send_all(&mut self, records: &[(&str, &[u8])]) -> Result<(), Failure> {
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
