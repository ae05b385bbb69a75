//! Admin calls: creating topics, looking up a topic's partitions and
//! configuration, and setting a group's offsets from outside it.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::RDKafkaErrorCode;

use super::commit::commit_offsets;
use super::config::{client_config, kafka_error, preflight};
use crate::kafka::{error, Cluster};
use crate::ConnectorError;

/// How long metadata and offset look-ups may take before they fail.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The partitions of `topic`, asking the broker to create it (with its
/// default partition count) if it does not exist yet.
pub(super) fn ensure_topic<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>, ConnectorError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    if t.error().is_none() && !ids.is_empty() {
                        ids.sort_unstable();
                        return Ok(ids);
                    }
                    last = match t.error() {
                        Some(e) => format!("{:?}", RDKafkaErrorCode::from(e)),
                        None => "no partitions yet".into(),
                    };
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(error(
        brokers,
        format!(
            "topic {topic} does not exist and was not created within {LOOKUP_TIMEOUT:?} \
             (is auto.create.topics.enable off?): {last}"
        ),
    ))
}

/// Creates `topic` with `partitions` partitions, replication factor 1 and
/// the topic configuration `config`.
pub(crate) fn create_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<(), ConnectorError> {
    create_topic_with(cluster, topic, partitions, 1, config).map(drop)
}

/// Creates `topic` with `partitions` partitions, `replication` replicas
/// (-1: the broker's `default.replication.factor`) and the topic
/// configuration `config`, unless it exists. Returns the admin client, for
/// a look at what exists.
pub(super) fn create_topic_with(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) -> Result<AdminClient<DefaultClientContext>, ConnectorError> {
    let brokers = cluster.brokers.as_str();
    preflight(cluster)?;
    let admin: AdminClient<DefaultClientContext> = client_config(cluster)?
        .create()
        .map_err(|e| kafka_error(brokers, "creating an admin client", e))?;
    let new = config.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
        |new, (key, value)| new.set(key, value),
    );
    let options = AdminOptions::new().operation_timeout(Some(LOOKUP_TIMEOUT));
    let results = wait_for(admin.create_topics([&new], &options))
        .map_err(|e| kafka_error(brokers, &format!("creating topic {topic}"), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(error(brokers, format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(admin)
}

/// An admin client of `cluster`.
pub(super) fn admin_client(
    cluster: &Cluster,
) -> Result<AdminClient<DefaultClientContext>, ConnectorError> {
    client_config(cluster)?
        .create()
        .map_err(|e| kafka_error(&cluster.brokers, "creating an admin client", e))
}

/// The value of `topic`'s configuration entry `name`, as the broker
/// describes it (`None`: the broker names no such entry).
pub(super) fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topic: &str,
    name: &str,
) -> Result<Option<String>, ConnectorError> {
    let options = AdminOptions::new().request_timeout(Some(LOOKUP_TIMEOUT));
    let described = wait_for(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options))
        .map_err(|e| kafka_error(brokers, &format!("describing topic {topic}"), e))?;
    match described.into_iter().next() {
        Some(Ok(resource)) => Ok(resource.get(name).and_then(|e| e.value.clone())),
        Some(Err(code)) => Err(error(brokers, format!("describing topic {topic}: {code}"))),
        None => Err(error(
            brokers,
            format!("describing topic {topic}: no answer"),
        )),
    }
}

/// Sets group `group`'s committed offsets of `topic`, outside any group
/// membership: for an operator moving a group that is not running, and
/// for tests.
pub(crate) fn commit_group_offsets(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), ConnectorError> {
    let brokers = cluster.brokers.as_str();
    preflight(cluster)?;
    let consumer: BaseConsumer = client_config(cluster)?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kafka_error(brokers, "creating the consumer", e))?;
    commit_offsets(&consumer, topic, offsets)
        .map_err(|e| kafka_error(brokers, &format!("committing offsets of group {group}"), e))
}

/// Blocks the calling thread until `future` is ready. The admin client's
/// answers come from its own thread through a one-shot channel; this is a
/// plain wait for one of them, not a task executor.
pub(super) fn wait_for<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
