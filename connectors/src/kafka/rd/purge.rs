//! Deleting what a repartition topic's readers have committed.
//!
//! A repartition topic is the job's own: nothing but the job's next
//! segment reads it, and once that segment's group has committed an
//! offset, no reader will ever ask for a record before it again. Left to
//! the topic's retention, those records would stay on the brokers' disks
//! for days (a week by Kafka's default), a copy of everything the job
//! read. So the source that reads a repartition topic deletes them
//! (Kafka's DeleteRecords), up to the offsets it committed, from a thread
//! of its own.
//!
//! Safe because it deletes below committed offsets only: a committed
//! offset says that every record before it has been processed and its
//! results written (and, under exactly-once, committed with it). A
//! partition that moved on to another member meanwhile has committed at
//! least as far there, since a group's offsets only move forward under
//! fila. The user's own input topic is never purged.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::wait_for;
use super::config::{client_config, kafka_error};
use super::lock;
use crate::kafka::Cluster;
use crate::ConnectorError;

/// How often committed records are deleted. Each delete is one request
/// per partition leader, so a short interval costs the brokers little;
/// a long one leaves more on disk between deletes. Whatever is committed
/// at the end of a run is deleted then.
pub(super) const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// How long one delete may wait for the brokers before it is given up:
/// the next one covers its offsets. It also bounds how long the end of a
/// run waits for the last one.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deletes committed records of one topic, from a thread of its own:
/// every [`PURGE_INTERVAL`], and once more when dropped.
pub(super) struct Purge {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Per partition, the highest offset committed so far.
    committed: BTreeMap<i32, i64>,
    stop: bool,
}

impl Purge {
    pub(super) fn start(cluster: &Cluster, topic: &str) -> Result<Purge, ConnectorError> {
        let brokers = cluster.brokers.clone();
        let admin: AdminClient<DefaultClientContext> = client_config(cluster)?
            .create()
            .map_err(|e| kafka_error(&brokers, "creating the purging admin client", e))?;
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("fila-purge".into())
            .spawn({
                let (shared, topic) = (shared.clone(), topic.to_owned());
                move || run(&admin, &topic, &brokers, &shared)
            })
            .map_err(|e| ConnectorError::Config {
                message: format!("starting the thread that purges {topic}: {e}"),
            })?;
        Ok(Purge {
            shared,
            thread: Some(thread),
        })
    }

    /// `offsets` of the topic were just committed: the records before
    /// them may go.
    pub(super) fn committed(&self, offsets: &[(i32, i64)]) {
        let mut state = lock(&self.shared.state);
        for &(partition, offset) in offsets {
            let at = state.committed.entry(partition).or_insert(offset);
            *at = (*at).max(offset);
        }
    }
}

impl Drop for Purge {
    /// Deletes what was committed since the last delete, and waits for it
    /// (at most [`PURGE_TIMEOUT`]).
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(admin: &AdminClient<DefaultClientContext>, topic: &str, brokers: &str, shared: &Shared) {
    // Per partition, the offset the last successful delete went up to.
    let mut purged: BTreeMap<i32, i64> = BTreeMap::new();
    let mut failing = false;
    loop {
        let (committed, stop) = {
            let state = lock(&shared.state);
            let (state, _) = shared
                .wake
                .wait_timeout_while(state, PURGE_INTERVAL, |s| !s.stop)
                .unwrap_or_else(|p| p.into_inner());
            (state.committed.clone(), state.stop)
        };
        let due: Vec<(i32, i64)> = committed
            .into_iter()
            .filter(|&(p, offset)| purged.get(&p).map_or(true, |&done| offset > done))
            .collect();
        if !due.is_empty() {
            match delete(admin, topic, &due) {
                Ok(()) => {
                    if failing {
                        tracing::info!(topic, "deleting committed records works again");
                    }
                    failing = false;
                    tracing::debug!(topic, ?due, "deleted committed records");
                    purged.extend(due);
                }
                // Harmless but for disk space: the records stay until the
                // next delete, or the topic's retention. Said once until
                // a delete succeeds again.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "{}; they stay until a later delete or the topic's retention",
                        kafka_error(
                            brokers,
                            &format!("deleting committed records of {topic}"),
                            e
                        )
                    );
                }
                Err(e) => tracing::debug!(topic, "deleting committed records failed again: {e}"),
            }
        }
        if stop {
            return;
        }
    }
}

/// Deletes the records of `topic` before `offsets`, partition by
/// partition; fails if any partition's delete did.
fn delete(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    let options = AdminOptions::new()
        .request_timeout(Some(PURGE_TIMEOUT))
        .operation_timeout(Some(PURGE_TIMEOUT));
    let answer = wait_for(admin.delete_records(&tpl, &options))?;
    for element in answer.elements() {
        element.error()?;
    }
    Ok(())
}
