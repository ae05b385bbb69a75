//! The reader the source and the tools share: fetches assigned partitions
//! from given offsets, resets offsets out of range, and rides out broker
//! faults on a fresh client. What only the tools call of it (`new`,
//! `end_offsets`, `fetch`) is in [`tools`](super::tools).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka::client::{FetchOffset, FetchPartition, KafkaClient};
use kafka::error::{Error as KafkaError, KafkaCode};

use super::admin::offsets;
use super::config::{connect, Failure};
use crate::kafka::{error, interleave, Fetched, OffsetReset, Outage};
use crate::{ConnectorError, Position};

/// Bytes asked for per partition in a fetch, at first.
const FETCH_BYTES: i32 = 256 << 10;
/// A partition whose next record does not fit gets twice the bytes, up to
/// this; a larger record stops the run with an error naming it.
const MAX_FETCH_BYTES: i32 = 64 << 20;

/// The longest a fetch waits on the broker. A caller that allows longer
/// just polls again; a wait this short stays far inside the client's
/// socket timeouts.
pub(super) const MAX_FETCH_WAIT: Duration = Duration::from_secs(5);

/// Reads assigned partitions of a topic from given offsets.
pub(crate) struct TopicReader {
    pub(super) client: KafkaClient,
    brokers: String,
    topic: String,
    next: BTreeMap<i32, i64>,
    /// Bytes to ask for, per partition that needed more than
    /// [`FETCH_BYTES`].
    fetch_bytes: BTreeMap<i32, i32>,
    /// What an offset out of range resumes at.
    reset: OffsetReset,
    outage: Outage,
    /// After a transient failure: the next fetch starts with a new client.
    reconnect: bool,
    /// No fetch before this (the backoff after a failure).
    next_attempt: Instant,
}

impl TopicReader {
    pub(super) fn with(
        client: KafkaClient,
        brokers: &str,
        topic: &str,
        start: BTreeMap<i32, i64>,
        reset: OffsetReset,
        retry_timeout: Duration,
    ) -> TopicReader {
        TopicReader {
            client,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            next: start,
            fetch_bytes: BTreeMap::new(),
            reset,
            outage: Outage::new(brokers, retry_timeout),
            reconnect: false,
            next_attempt: Instant::now(),
        }
    }

    /// One fetch that waits up to about `wait` on the broker for data:
    /// whole milliseconds (under one is no wait), at most
    /// [`MAX_FETCH_WAIT`]. A broker fault is retried after a backoff, on
    /// a new client, for up to the retry timeout; meanwhile this returns
    /// nothing, after waiting at most `wait`.
    pub(super) fn fetch_within(&mut self, wait: Duration) -> Result<Vec<Fetched>, ConnectorError> {
        let now = Instant::now();
        if now < self.next_attempt {
            std::thread::sleep(wait.min(self.next_attempt - now));
            return Ok(Vec::new());
        }
        if self.reconnect {
            match connect(&self.brokers) {
                Ok(client) => {
                    self.client = client;
                    self.reconnect = false;
                }
                // Any failure to connect is the broker not answering yet.
                Err(e) => return self.failed(e.to_string()),
            }
        }
        let wait = wait.min(MAX_FETCH_WAIT);
        if self.client.fetch_max_wait_time().as_millis() != wait.as_millis() {
            self.client
                .set_fetch_max_wait_time(wait)
                .expect("MAX_FETCH_WAIT is a valid fetch wait");
        }
        match self.fetch_once() {
            Ok((fetched, None)) => {
                self.outage.succeeded();
                Ok(fetched)
            }
            Ok((fetched, Some(cause))) => {
                // Some partitions failed: retried on a new client, which
                // loads the metadata afresh, and given up after the retry
                // timeout. What the others brought is kept: their offsets
                // have moved past it.
                self.failed(cause)?;
                Ok(fetched)
            }
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(cause)) => self.failed(cause),
        }
    }

    fn failed(&mut self, cause: String) -> Result<Vec<Fetched>, ConnectorError> {
        self.outage.failed(&cause);
        self.outage.check()?;
        self.reconnect = true;
        self.next_attempt = Instant::now() + self.outage.backoff();
        Ok(Vec::new())
    }

    /// One fetch: the records that came back, and the transient fault of
    /// the partitions that brought none, if any. Every record whose offset
    /// the fetch moves past is returned, whatever another partition
    /// answered: a record dropped here would never be read again, and a
    /// commit of the later ones would cover it. Only an error that stops
    /// the run drops them (nothing after them is read, so no commit covers
    /// them).
    fn fetch_once(&mut self) -> Result<(Vec<Fetched>, Option<String>), Failure> {
        let topic = self.topic.as_str();
        let requests = self.next.iter().map(|(&p, &offset)| {
            let bytes = self.fetch_bytes.get(&p).copied().unwrap_or(FETCH_BYTES);
            FetchPartition::new(topic, p, offset).with_max_bytes(bytes)
        });
        let responses = self
            .client
            .fetch_messages(requests)
            .map_err(|e| Failure::of(&self.brokers, &format!("fetching from {topic}"), e))?;
        let mut answers = Vec::new();
        for response in &responses {
            for t in response.topics() {
                for p in t.partitions() {
                    let partition = p.partition();
                    let answer = match p.data() {
                        Ok(data) => Answer::Records(
                            data.messages()
                                .iter()
                                .map(|m| Fetched {
                                    position: Position {
                                        partition,
                                        offset: m.offset,
                                    },
                                    key: (!m.key.is_empty()).then(|| m.key.to_vec()),
                                    payload: m.value.to_vec(),
                                    headers: Vec::new(),
                                })
                                .collect(),
                            data.highwatermark_offset(),
                        ),
                        Err(e) => match &*e {
                            KafkaError::Kafka(code) => Answer::Refused(*code),
                            other => Answer::Broken(other.to_string()),
                        },
                    };
                    answers.push((partition, answer));
                }
            }
        }
        let Taken {
            per_partition,
            reset,
            grow,
            answered,
            mut refused,
        } = self.take(answers)?;
        let topic = self.topic.as_str();
        for (partition, offset) in grow {
            let bytes = self.fetch_bytes.entry(partition).or_insert(FETCH_BYTES);
            if *bytes >= MAX_FETCH_BYTES {
                return Err(Failure::Fatal(error(
                    &self.brokers,
                    format!(
                        "the records from offset {offset} of {topic} partition {partition} \
                         do not fit in {} MiB, the most fila fetches at once",
                        MAX_FETCH_BYTES >> 20
                    ),
                )));
            }
            *bytes = (*bytes * 2).min(MAX_FETCH_BYTES);
            tracing::info!(
                topic,
                partition,
                offset,
                bytes = *bytes,
                "the next records did not fit in a fetch; asking for more bytes"
            );
        }
        if !reset.is_empty() {
            let (which, name) = match self.reset {
                OffsetReset::Earliest => (FetchOffset::Earliest, "earliest"),
                OffsetReset::Latest => (FetchOffset::Latest, "latest"),
                OffsetReset::Error => {
                    let partition = reset[0];
                    return Err(Failure::Fatal(error(
                        &self.brokers,
                        format!(
                            "offset {} of {topic} partition {partition} is out of range \
                             (deleted by retention?), and --offset-reset is error",
                            self.next[&partition]
                        ),
                    )));
                }
            };
            // A look-up that fails (its broker restarting, say) is a fault
            // of the partitions to reset: they stay where they are, are
            // refused again on the next fetch and reset then, and the
            // other partitions' records are handed out meanwhile.
            match offsets(&mut self.client, &self.brokers, topic, which) {
                Ok(to) => {
                    for partition in reset {
                        // The client leaves out a partition whose leader it
                        // does not know: a fault of that partition, not
                        // offset 0.
                        let Some(&to) = to.get(&partition) else {
                            refused.get_or_insert_with(|| {
                                format!("no {name} offset of {topic} partition {partition} known")
                            });
                            continue;
                        };
                        tracing::warn!(
                            topic,
                            partition,
                            from = self.next[&partition],
                            to,
                            "offset out of range; resuming at the {name} offset (--offset-reset)"
                        );
                        self.next.insert(partition, to);
                    }
                }
                Err(e) => {
                    refused.get_or_insert_with(|| {
                        format!("looking up the {name} offsets of {topic} to reset {reset:?}: {e}")
                    });
                }
            }
        }
        // The client asks only the leaders it knows and skips the other
        // partitions without a word; a leader it lost (its broker
        // stopped) would leave them unread for good. That is a fault like
        // a partition's error.
        let unanswered: Vec<i32> = self
            .next
            .keys()
            .filter(|p| !answered.contains(*p))
            .copied()
            .collect();
        let fault = refused.or_else(|| {
            (!unanswered.is_empty())
                .then(|| format!("no leader known for {topic} partitions {unanswered:?}"))
        });
        Ok((interleave(per_partition), fault))
    }

    /// Moves each partition's next offset past the records it answered
    /// with, and sorts out the rest: a message set too large for the bytes
    /// asked, an offset out of range, a partition's transient fault (its
    /// leader moving while a broker restarts or stalls, say), which fails
    /// that partition alone and keeps the others' records.
    fn take(&mut self, answers: Vec<(i32, Answer)>) -> Result<Taken, Failure> {
        let topic = self.topic.as_str();
        let mut taken = Taken::default();
        for (partition, answer) in answers {
            let Some(next) = self.next.get_mut(&partition) else {
                continue;
            };
            taken.answered.insert(partition);
            let what = || format!("fetching {topic} partition {partition}");
            match answer {
                Answer::Records(mut out, highwatermark) => {
                    let asked = *next;
                    // A fetch may start before the offset asked for.
                    out.retain(|f| f.position.offset >= asked);
                    if let Some(last) = out.last() {
                        *next = last.position.offset + 1;
                    } else if highwatermark > asked {
                        // Nothing came back though the partition has
                        // records past `asked`: the message set that holds
                        // the next one is larger than the bytes asked for.
                        taken.grow.push((partition, asked));
                    }
                    taken.per_partition.push(out);
                }
                Answer::Refused(KafkaCode::OffsetOutOfRange) => taken.reset.push(partition),
                Answer::Refused(code) => {
                    match Failure::of(&self.brokers, &what(), KafkaError::Kafka(code)) {
                        Failure::Transient(cause) => {
                            taken.refused.get_or_insert(cause);
                        }
                        fatal => return Err(fatal),
                    }
                }
                Answer::Broken(e) => {
                    return Err(Failure::Fatal(error(
                        &self.brokers,
                        format!("{}: {e}", what()),
                    )))
                }
            }
        }
        Ok(taken)
    }
}

/// What one partition of a fetch answered, copied out of the response.
enum Answer {
    /// Its records, perhaps from before the offset asked for, and its
    /// high watermark.
    Records(Vec<Fetched>, i64),
    /// A Kafka error code.
    Refused(KafkaCode),
    /// Any other failure.
    Broken(String),
}

/// A fetch's answers, sorted out by [`TopicReader::take`].
#[derive(Default)]
struct Taken {
    /// The records to hand out, one list per partition.
    per_partition: Vec<Vec<Fetched>>,
    /// Partitions whose offset is out of range.
    reset: Vec<i32>,
    /// Partitions, and their offsets, whose next message set did not fit.
    grow: Vec<(i32, i64)>,
    /// Partitions that answered at all.
    answered: BTreeSet<i32>,
    /// The first transient fault of a partition, if any.
    refused: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(retry_timeout: Duration) -> TopicReader {
        // A client with no metadata knows no partition's leader.
        TopicReader::with(
            KafkaClient::new(Vec::new()),
            "127.0.0.1:1",
            "t",
            BTreeMap::from([(0, 0), (1, 0)]),
            OffsetReset::Earliest,
            retry_timeout,
        )
    }

    fn records(partition: i32, offsets: std::ops::Range<i64>) -> Vec<Fetched> {
        offsets
            .map(|offset| Fetched {
                position: Position { partition, offset },
                key: None,
                payload: offset.to_string().into_bytes(),
                headers: Vec::new(),
            })
            .collect()
    }

    /// The offsets of the records `taken` hands out, in its order.
    fn offsets(taken: &Taken) -> Vec<i64> {
        let all = taken.per_partition.iter().flatten();
        all.map(|f| f.position.offset).collect()
    }

    #[test]
    fn a_partition_whose_leader_moved_keeps_the_records_the_others_brought() {
        // Either order: a fault answered before or after the records.
        for refused_first in [false, true] {
            let mut r = reader(Duration::from_secs(60));
            let mut answers = vec![
                (0, Answer::Records(records(0, 0..3), 3)),
                (1, Answer::Refused(KafkaCode::NotLeaderForPartition)),
            ];
            if refused_first {
                answers.reverse();
            }
            let taken = r.take(answers).ok().expect("a moving leader is transient");
            assert_eq!(offsets(&taken), [0, 1, 2], "refused first: {refused_first}");
            assert_eq!(r.next, BTreeMap::from([(0, 3), (1, 0)]));
            let cause = taken.refused.expect("the fault is reported");
            assert!(cause.contains("t partition 1"), "{cause}");
        }
    }

    #[test]
    fn records_before_the_offset_asked_are_skipped_and_a_set_too_large_grows() {
        let mut r = reader(Duration::from_secs(60));
        r.next.insert(0, 2);
        let taken = r
            .take(vec![
                (0, Answer::Records(records(0, 0..4), 4)),
                (1, Answer::Records(Vec::new(), 7)),
                (2, Answer::Records(records(2, 0..1), 1)),
            ])
            .ok()
            .unwrap();
        assert_eq!(offsets(&taken), [2, 3], "partition 2 is not this reader's");
        assert_eq!(r.next, BTreeMap::from([(0, 4), (1, 0)]));
        assert_eq!(taken.grow, [(1, 0)]);
        assert!(taken.refused.is_none());
    }

    #[test]
    fn a_partition_refused_for_good_stops_the_fetch() {
        let mut r = reader(Duration::from_secs(60));
        let answers = vec![
            (0, Answer::Records(records(0, 0..3), 3)),
            (1, Answer::Refused(KafkaCode::TopicAuthorizationFailed)),
        ];
        assert!(matches!(r.take(answers), Err(Failure::Fatal(_))));
        let answers = vec![(1, Answer::Refused(KafkaCode::OffsetOutOfRange))];
        assert_eq!(r.take(answers).ok().unwrap().reset, [1]);
    }

    #[test]
    fn partitions_without_a_known_leader_are_a_fault_not_an_idle_topic() {
        let mut patient = reader(Duration::from_secs(60));
        assert!(patient.fetch_within(Duration::ZERO).unwrap().is_empty());
        assert!(patient.outage.is_failing());
        assert!(
            patient.reconnect,
            "the next attempt loads the metadata afresh"
        );

        let e = reader(Duration::ZERO)
            .fetch_within(Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no leader known for t partitions [0, 1]"), "{e}");
        assert!(e.contains("--kafka-retry-timeout"), "{e}");
    }
}
