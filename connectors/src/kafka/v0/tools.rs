//! What only the load client and the tests call: a reader of given
//! offsets, a topic's end offsets, and sending a batch and waiting for it.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka::client::FetchOffset;

use super::admin::{ensure_topic, offsets};
use super::config::connect;
use super::fetch::TopicReader;
use super::produce::TopicWriter;
use crate::kafka::{Fetched, OffsetReset, DEFAULT_RETRY_TIMEOUT};
use crate::ConnectorError;

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

    /// The current end (next offset to be written) of every partition.
    pub fn end_offsets(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        offsets_of(brokers, topic, FetchOffset::Latest)
    }

    /// The start (the first record kept) of every partition.
    pub fn start_offsets(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectorError> {
        offsets_of(brokers, topic, FetchOffset::Earliest)
    }

    /// One fetch: waits up to about 100 ms on the broker for data.
    pub fn fetch(&mut self) -> Result<Vec<Fetched>, ConnectorError> {
        self.fetch_within(Duration::from_millis(100))
    }
}

/// Every partition's offset at `at`, creating the topic if needed.
fn offsets_of(
    brokers: &str,
    topic: &str,
    at: FetchOffset,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    let mut client = connect(brokers)?;
    ensure_topic(&mut client, brokers, topic)?;
    offsets(&mut client, brokers, topic, at)
}

impl TopicWriter {
    /// Sends every `(topic, value)` and returns once all are acknowledged.
    /// Values without a key are spread over the topic's partitions.
    pub fn send_all(&mut self, records: &[(&str, &[u8])]) -> Result<(), ConnectorError> {
        self.try_send_all(records)
            .map_err(|f| f.into_error(&self.brokers))
    }
}
