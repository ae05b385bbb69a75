//! The source: finds this replica's partitions and where each resumes,
//! and hands out what the shared reader fetches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::client::FetchOffset;

use super::admin::{ensure_topic, offsets};
use super::commit::KafkaCommitter;
use super::config::{connect, explain};
use super::fetch::TopicReader;
use crate::kafka::{error, OffsetReset, Outage, Replica, SourceConfig};
use crate::{Acks, Committing, ConnectorError, Envelope, Polled, Source};

/// Reads the input topic from the group's committed offsets (or where
/// `--offset-reset` says, where none is committed or it is out of range).
/// Reads only when polled. A broker fault is retried with a fresh client
/// after a backoff, for up to the retry timeout; a poll meanwhile returns
/// idle after at most its timeout, so the driver can still stop.
pub(crate) struct KafkaSource {
    config: SourceConfig,
    reader: TopicReader,
    buffer: VecDeque<Envelope>,
    acks: Arc<Acks>,
}

impl KafkaSource {
    /// Connects, finds this replica's partitions and where each resumes,
    /// and registers them with `acks`.
    pub fn connect(config: &SourceConfig, replica: Replica) -> Result<KafkaSource, ConnectorError> {
        let acks = Arc::new(Acks::new());
        let brokers = config.cluster.brokers.as_str();
        let mut client = connect(brokers)?;
        let all = ensure_topic(&mut client, brokers, &config.topic)?;
        let mine: Vec<i32> = all.iter().copied().filter(|&p| replica.owns(p)).collect();
        if mine.is_empty() {
            tracing::warn!(
                topic = %config.topic,
                partitions = all.len(),
                ?replica,
                "this replica owns no partition of the input topic; it will stay idle"
            );
        }
        let earliest = offsets(&mut client, brokers, &config.topic, FetchOffset::Earliest)?;
        let latest = offsets(&mut client, brokers, &config.topic, FetchOffset::Latest)?;
        let committed: BTreeMap<i32, i64> = client
            .fetch_group_topic_offset(&config.group, &config.topic)
            .map_err(|e| {
                explain(
                    brokers,
                    &format!("reading group {}'s offsets", config.group),
                    e,
                )
            })?
            .into_iter()
            .map(|po| (po.partition, po.offset))
            .collect();
        let mut start = BTreeMap::new();
        for p in mine {
            let floor = earliest.get(&p).copied().unwrap_or(0);
            let end = latest.get(&p).copied().unwrap_or(floor);
            let at = match committed.get(&p).copied().filter(|&o| o >= 0) {
                Some(o) if (floor..=end).contains(&o) => o,
                // -1 means nothing committed yet; outside the log means
                // the records were deleted by retention, or the topic
                // was made anew.
                found => {
                    let why = match found {
                        Some(o) => {
                            format!("the committed offset {o} is out of range {floor}..={end}")
                        }
                        None => "nothing is committed".to_owned(),
                    };
                    let at = match config.offset_reset {
                        OffsetReset::Earliest => floor,
                        OffsetReset::Latest => end,
                        OffsetReset::Error => {
                            return Err(error(
                                brokers,
                                format!(
                                    "partition {p} of {}: {why} for group {}, and \
                                     --offset-reset is error",
                                    config.topic, config.group
                                ),
                            ))
                        }
                    };
                    if found.is_some() {
                        tracing::warn!(topic = %config.topic, partition = p, at, "{why}; starting where --offset-reset says");
                    }
                    at
                }
            };
            acks.start_partition(p, at);
            start.insert(p, at);
        }
        tracing::info!(topic = %config.topic, group = %config.group, ?start, "reading");
        let reader = TopicReader::with(
            client,
            brokers,
            &config.topic,
            start,
            config.offset_reset,
            config.retry_timeout,
        );
        Ok(KafkaSource {
            config: config.clone(),
            reader,
            buffer: VecDeque::new(),
            acks,
        })
    }
}

impl Source for KafkaSource {
    /// Fetches only when what the last fetch brought is used up; the fetch
    /// waits on the broker for about `timeout` at most.
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError> {
        if self.buffer.is_empty() {
            let fetched = self.reader.fetch_within(timeout)?;
            let arrived = Instant::now();
            self.buffer.extend(fetched.into_iter().map(|f| Envelope {
                key: f.key,
                payload: f.payload,
                headers: Vec::new(),
                timestamp: None,
                position: f.position,
                arrived,
            }));
        }
        Ok(self.buffer.pop_front().map_or(Polled::Idle, Polled::Record))
    }

    fn committing(&mut self) -> Result<Option<Committing>, ConnectorError> {
        Ok(Some(Committing {
            acks: self.acks.clone(),
            committer: Box::new(KafkaCommitter {
                client: Some(connect(&self.config.cluster.brokers)?),
                outage: Outage::new(&self.config.cluster.brokers, self.config.retry_timeout),
                config: self.config.clone(),
                acks: self.acks.clone(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use kafka::client::KafkaClient;

    use super::super::fetch::MAX_FETCH_WAIT;
    use super::*;
    use crate::kafka::DEFAULT_RETRY_TIMEOUT;

    #[test]
    fn a_poll_waits_on_the_broker_as_long_as_its_timeout_allows() {
        // No partitions: the fetch asks no broker anything.
        let mut source = KafkaSource {
            config: SourceConfig {
                cluster: crate::kafka::Cluster::default(),
                topic: "t".into(),
                group: "g".into(),
                assignment: crate::kafka::Assignment::Static(Replica::ALL),
                offset_reset: OffsetReset::Earliest,
                retry_timeout: DEFAULT_RETRY_TIMEOUT,
                purge_committed: false,
            },
            reader: TopicReader::with(
                KafkaClient::new(Vec::new()),
                "",
                "t",
                BTreeMap::new(),
                OffsetReset::Earliest,
                DEFAULT_RETRY_TIMEOUT,
            ),
            buffer: VecDeque::new(),
            acks: Arc::new(Acks::new()),
        };
        for (timeout, wait) in [
            (Duration::from_millis(20), Duration::from_millis(20)),
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_secs(60), MAX_FETCH_WAIT),
        ] {
            assert!(matches!(source.poll(timeout).unwrap(), Polled::Idle));
            let set = source.reader.client.fetch_max_wait_time();
            assert_eq!(set, wait, "poll({timeout:?})");
        }
        // The load client's reader keeps its own wait.
        source.reader.fetch().unwrap();
        let set = source.reader.client.fetch_max_wait_time();
        assert_eq!(set, Duration::from_millis(100));
    }
}
