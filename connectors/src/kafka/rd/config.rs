//! The client's configuration, how its logs and errors reach `tracing`,
//! and what its errors mean: fatal, or only partitions moving.

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::{error, Outage};
use crate::ConnectorError;

pub(super) fn kafka_error(brokers: &str, what: &str, e: KafkaError) -> ConnectorError {
    error(brokers, format!("{what}: {e}"))
}

pub(super) fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "fila")
        .set_log_level(RDKafkaLogLevel::Warning);
    // librdkafka's own debug log, for diagnosing a client: a list of its
    // debug contexts (`cgrp,fetch`, `all`), shown with FILA_LOG=debug.
    if let Ok(contexts) = std::env::var("FILA_RDKAFKA_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    config
}

/// Routes librdkafka's logs and errors to `tracing`. Client errors are
/// transient faults (librdkafka retries them itself; the fatal ones come
/// back from the calls that failed), so they go to the client's
/// [`Outage`], which says the first of a run once.
pub(super) struct Logging {
    pub(super) outage: Outage,
}

impl Logging {
    pub(super) fn new(brokers: &str, retry_timeout: Duration) -> Logging {
        Logging {
            outage: Outage::new(brokers, retry_timeout),
        }
    }

    pub(super) fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // A failed connection is also reported through `error`, which the
        // outage logs once per run; librdkafka would log it per attempt.
        if fac == "FAIL" {
            tracing::debug!(target: "librdkafka", fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    pub(super) fn error(&self, error: KafkaError, reason: &str) {
        // A reader that asked to hear of partition ends hears of them
        // here too; they are no fault.
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        // Fatal errors come back from the call that failed, which says
        // more; they are no outage to retry.
        if fatal(&error) {
            tracing::debug!("{reason}: {error}");
            return;
        }
        self.outage.failed(&format_args!("{reason}: {error}"));
    }
}

/// Whether a failed commit only means the partitions moved to another
/// member (or are moving): not an error of this process.
pub(super) fn moved_on(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            RebalanceInProgress
                | IllegalGeneration
                | UnknownMemberId
                | FencedInstanceId
                | StaleMemberEpoch
                | UnknownTopicOrPartition
                | State
                | AssignmentLost
                | NoOffset
        )
    )
}

/// Whether an error only says that a partition's leader is not known yet:
/// a topic just created, or a broker just back from a restart or a stall,
/// whose metadata the client has not caught up with.
pub(super) fn leader_moving(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            NotLeaderForPartition | LeaderNotAvailable | UnknownTopicOrPartition | UnknownPartition
        )
    )
}

/// Whether retrying can never help.
pub(super) fn fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Fatal
                | AutoOffsetReset
                | GroupAuthorizationFailed
                | TopicAuthorizationFailed
                | SaslAuthenticationFailed
                | InvalidGroupId
                | UnsupportedFeature
        )
    )
}
