//! The committer: commits what the source's offset tracker allows, on a
//! client of its own.

use std::sync::Arc;

use kafka::client::{CommitOffset, KafkaClient};

use super::config::{connect, Failure};
use crate::kafka::{Outage, SourceConfig};
use crate::{Acks, Committer, ConnectorError};

/// Commits on a client of its own. A broker fault leaves the offsets
/// committable, and the next commit, on a new client, carries them.
pub(super) struct KafkaCommitter {
    /// `None` after a transient failure, until the next commit connects.
    pub(super) client: Option<KafkaClient>,
    pub(super) outage: Outage,
    pub(super) config: SourceConfig,
    pub(super) acks: Arc<Acks>,
}

impl KafkaCommitter {
    fn try_commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), Failure> {
        let brokers = self.config.cluster.brokers.as_str();
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(connect(brokers).map_err(|e| Failure::Transient(e.to_string()))?),
        };
        let topic = self.config.topic.as_str();
        client
            .commit_offsets(
                &self.config.group,
                offsets.iter().map(|&(p, o)| CommitOffset::new(topic, p, o)),
            )
            .map_err(|e| {
                Failure::of(
                    brokers,
                    &format!("committing offsets of group {}", self.config.group),
                    e,
                )
            })
    }
}

impl Committer for KafkaCommitter {
    fn commit(&mut self) -> Result<bool, ConnectorError> {
        let acks = self.acks.clone();
        let offsets = acks.committable();
        if offsets.is_empty() {
            return Ok(false);
        }
        match self.try_commit(&offsets) {
            Ok(()) => {
                self.outage.succeeded();
                acks.mark_committed(&offsets);
                Ok(true)
            }
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(cause)) => {
                // The uncommitted bound holds the source back meanwhile.
                self.outage.failed(&cause);
                self.client = None;
                self.outage.check().map(|()| false)
            }
        }
    }
}
