//! The committer: commits what the source's offset tracker allows, under
//! the lock a revocation's commit shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};

use super::config::{fatal, kafka_error, moved_on};
use super::source::SourceContext;
use crate::bounded::{BoundedCall, Unanswered};
use crate::kafka::error;
use crate::{Committer, ConnectorError};

/// The offsets of `topic` as librdkafka takes them.
fn offsets_list(topic: &str, offsets: &[(i32, i64)]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// Commits `offsets` and waits for the answer, for tools: librdkafka
/// bounds the wait by its own request timeouts once the group's
/// coordinator is known.
pub(super) fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), KafkaError> {
    consumer.commit(&offsets_list(topic, offsets)?, CommitMode::Sync)
}

/// How long a commit waits for the broker's answer before it is given up
/// (its offsets stay committable, and the next commit carries them). A
/// synchronous commit in librdkafka waits for as long as the group's
/// coordinator takes to be found, with no bound of its own.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A commit of `offsets` of the source's topic, waited for at most
/// [`COMMIT_TIMEOUT`] on `calls` (the thread the source's commits are made
/// on). `Ok(Err)` is the broker's answer; `Err` is no answer.
pub(super) fn commit_bounded(
    consumer: &Arc<BaseConsumer<SourceContext>>,
    calls: &mut BoundedCall<KafkaResult<()>>,
    offsets: &[(i32, i64)],
) -> Result<KafkaResult<()>, Unanswered> {
    let tpl = match offsets_list(&consumer.context().topic, offsets) {
        Ok(tpl) => tpl,
        Err(e) => return Ok(Err(e)),
    };
    let consumer = consumer.clone();
    calls.call(COMMIT_TIMEOUT, move || {
        consumer.commit(&tpl, CommitMode::Sync)
    })
}

pub(super) struct RdCommitter {
    pub(super) consumer: Arc<BaseConsumer<SourceContext>>,
    /// When the group began refusing this member's commits, and whether
    /// that was said.
    pub(super) refused_since: Option<(Instant, bool)>,
    /// Exactly-once: offsets go into the sink's transactions, never
    /// through the consumer.
    pub(super) in_transactions: bool,
}

/// How long the group may refuse commits (a rebalance, a fenced member
/// rejoining) before fila says so.
const REFUSED_WARN: Duration = Duration::from_secs(10);

impl Committer for RdCommitter {
    fn commit(&mut self) -> Result<bool, ConnectorError> {
        let context = self.consumer.context();
        if self.in_transactions {
            return Err(error(
                &context.brokers,
                "this source's offsets are committed in the sink's transactions",
            ));
        }
        let acks = &context.acks;
        let mut calls = context.commit.lock();
        let offsets = acks.committable();
        if offsets.is_empty() {
            return Ok(false);
        }
        let answer = match commit_bounded(&self.consumer, &mut calls, &offsets) {
            Ok(answer) => answer,
            Err(unanswered) => {
                // Like a broker that is away: the offsets stay committable
                // and the replay bound holds the source back meanwhile.
                // Said once per stuck call, not at every tick it blocks.
                if unanswered == Unanswered::Busy {
                    tracing::debug!("an offset commit is still waiting for its answer");
                } else {
                    tracing::warn!(
                        "an offset commit got no answer: {unanswered}; offered again later"
                    );
                }
                return Ok(false);
            }
        };
        match answer {
            Ok(()) => {
                context.logging.outage.succeeded();
                if let Some((since, true)) = self.refused_since {
                    tracing::info!("commits accepted again after {:.1?}", since.elapsed());
                }
                self.refused_since = None;
                context.mark_committed(&offsets);
                Ok(true)
            }
            Err(e) if moved_on(&e) => {
                tracing::debug!("commit refused while partitions move ({e}); offered again later");
                let (since, said) = self.refused_since.get_or_insert((Instant::now(), false));
                if !*said && since.elapsed() >= REFUSED_WARN {
                    *said = true;
                    tracing::warn!(
                        "the group has refused this member's commits for {:.1?} ({e}); \
                         reading waits until it assigns partitions again",
                        since.elapsed()
                    );
                }
                Ok(false)
            }
            Err(e) if fatal(&e) => Err(kafka_error(&context.brokers, "committing offsets", e)),
            Err(e) => {
                // The broker is away or busy: the offsets stay committable,
                // and the next commit carries them. The uncommitted bound
                // holds the source back meanwhile.
                context.logging.error(e, "committing offsets");
                Ok(false)
            }
        }
    }
}
