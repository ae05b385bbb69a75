//! Topic and offset look-ups, and setting a group's offsets from outside
//! it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::client::{CommitOffset, FetchOffset, KafkaClient};

use super::config::{connect, explain, leaders_moving};
use crate::kafka::error;
use crate::ConnectorError;

/// How long metadata and offset look-ups may take before they fail.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The partitions of `topic`, creating the topic (with the broker's default
/// partition count) if it does not exist yet.
pub(super) fn ensure_topic(
    client: &mut KafkaClient,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>, ConnectorError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
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

pub(super) fn offsets(
    client: &mut KafkaClient,
    brokers: &str,
    topic: &str,
    which: FetchOffset,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    // A topic just created may not have its leaders settled yet: the
    // broker answers NotLeaderForPartition for a moment. Retry, bounded.
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
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

/// Sets group `group`'s committed offsets of `topic` (see the rdkafka
/// client's function of the same name).
pub(crate) fn commit_group_offsets(
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
