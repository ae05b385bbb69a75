//! Connecting to the brokers, and what the client's errors mean: worth
//! retrying on a fresh client, or not, and how to say them to a user.

use std::time::Duration;

use kafka::client::{GroupOffsetStorage, KafkaClient};
use kafka::error::{Error as KafkaError, KafkaCode};

use crate::kafka::{error, hosts, BrokerVersions};
use crate::ConnectorError;

/// Turns a client error into one a user can act on.
pub(super) fn explain(brokers: &str, what: &str, e: KafkaError) -> ConnectorError {
    use std::io::ErrorKind::*;
    let message = match &e {
        KafkaError::NoHostReachable => {
            format!("{what}: cannot connect to any broker (is Kafka running there?)")
        }
        KafkaError::Io(io)
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) =>
        {
            format!("{what}: the broker closed the connection ({io})")
        }
        KafkaError::UnexpectedEOF => format!("{what}: the broker's answer was cut short"),
        other => format!("{what}: {other}"),
    };
    error(brokers, message)
}

/// Whether retrying, with a fresh client (new connections and metadata),
/// can outlast the error: the broker is restarting, stalled, or moving a
/// partition's leadership.
fn transient(e: &KafkaError) -> bool {
    let code = |c: &KafkaCode| {
        use KafkaCode::*;
        matches!(
            c,
            UnknownTopicOrPartition
                | LeaderNotAvailable
                | NotLeaderForPartition
                | RequestTimedOut
                | BrokerNotAvailable
                | ReplicaNotAvailable
                | NetworkException
                | GroupLoadInProgress
                | GroupCoordinatorNotAvailable
                | NotCoordinatorForGroup
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
        )
    };
    match e {
        KafkaError::Io(_) | KafkaError::NoHostReachable | KafkaError::UnexpectedEOF => true,
        KafkaError::Kafka(c) => code(c),
        KafkaError::TopicPartitionError { error_code, .. } => code(error_code),
        KafkaError::ArcSelf(inner) => transient(inner),
        _ => false,
    }
}

/// A failed request: a fault of the broker's that retrying can outlast,
/// or one it cannot.
pub(super) enum Failure {
    Transient(String),
    Fatal(ConnectorError),
}

impl Failure {
    pub(super) fn of(brokers: &str, what: &str, e: KafkaError) -> Failure {
        if transient(&e) {
            Failure::Transient(format!("{what}: {e}"))
        } else {
            Failure::Fatal(explain(brokers, what, e))
        }
    }

    /// For callers that do not retry.
    pub(super) fn into_error(self, brokers: &str) -> ConnectorError {
        match self {
            Failure::Transient(message) => error(brokers, message),
            Failure::Fatal(e) => e,
        }
    }
}

/// A client connected to `brokers`, with metadata loaded. A Kafka 4.x
/// broker gets a clear error here, before any v0 request it would drop.
pub(super) fn connect(brokers: &str) -> Result<KafkaClient, ConnectorError> {
    let hosts = hosts(brokers)?;
    let versions = BrokerVersions::probe(brokers)?;
    if !versions.accepts_v0_fetch() {
        return Err(error(
            brokers,
            format!(
                "the broker at {} is Kafka 4.x or later, which no longer accepts the \
                 protocol v0 requests of the kafka client (KIP-896); use \
                 --kafka-client rdkafka (the default)",
                versions.address
            ),
        ));
    }
    let mut client = KafkaClient::new(hosts);
    client.set_client_id("fila".into());
    client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
    client.set_retry_max_attempts(3);
    client.set_fetch_min_bytes(1);
    client
        .set_fetch_max_wait_time(Duration::from_millis(100))
        .expect("100 ms is a valid fetch wait");
    client.set_fetch_max_bytes_per_partition(1 << 20);
    client
        .load_metadata_all()
        .map_err(|e| explain(brokers, "loading metadata", e))?;
    Ok(client)
}

/// Whether an error only says that a partition's leader is not known yet.
pub(super) fn leaders_moving(e: &KafkaError) -> bool {
    let transient = |code: &KafkaCode| {
        matches!(
            code,
            KafkaCode::NotLeaderForPartition
                | KafkaCode::LeaderNotAvailable
                | KafkaCode::UnknownTopicOrPartition
        )
    };
    match e {
        KafkaError::Kafka(code) => transient(code),
        KafkaError::TopicPartitionError { error_code, .. } => transient(error_code),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_broker_is_named_in_the_error() {
        // Port 1 on loopback: nothing listens there, so connect fails at once.
        let Err(e) = connect("127.0.0.1:1") else {
            panic!("connected to a broker on port 1")
        };
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(text.contains("cannot connect"), "{text}");
    }
}
