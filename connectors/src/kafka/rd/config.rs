//! The client's configuration, how its logs and errors reach `tracing`,
//! and what its errors mean: fatal, or only partitions moving.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::{error, redact, BrokerVersions, Cluster, Outage};
use crate::ConnectorError;

pub(super) fn kafka_error(brokers: &str, what: &str, e: KafkaError) -> ConnectorError {
    error(brokers, format!("{what}: {e}"))
}

/// A client's configuration for `cluster`: its brokers and the user's
/// client properties. The caller then sets fila's defaults with
/// [`Defaults::default_to`] (which a user's property overrides) and fila's
/// own keys with `set` (which the user cannot set: `kafka::check` refused
/// them).
pub(super) fn client_config(cluster: &Cluster) -> Result<ClientConfig, ConnectorError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &cluster.brokers)
        .set("client.id", "fila")
        .set_log_level(RDKafkaLogLevel::Warning);
    let properties = cluster
        .properties
        .for_librdkafka()
        .map_err(|message| ConnectorError::Config { message })?;
    for (key, value) in properties {
        config.set(key, value);
    }
    // librdkafka's own debug log, for diagnosing a client: a list of its
    // debug contexts (`cgrp,fetch`, `all`), shown with FILA_LOG=debug.
    if let Ok(contexts) = std::env::var("FILA_RDKAFKA_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    Ok(config)
}

/// fila's tuning, which a user's client property overrides.
pub(super) trait Defaults {
    /// Sets `key` to `value` unless the configuration has it already.
    fn default_to(&mut self, key: &str, value: impl Into<String>) -> &mut Self;
}

impl Defaults for ClientConfig {
    fn default_to(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// Checks that `cluster` can be reached before a client is made: on
/// plain TCP, by asking a broker what it speaks (which also says whether
/// it serves KIP-848 groups); over TLS or SASL, by asking librdkafka for
/// the cluster's metadata with the user's properties, which fails at once,
/// and clearly, on a bad password or an untrusted certificate. librdkafka
/// alone would retry either quietly until the retry timeout. Returns what
/// the broker speaks when it could ask.
pub(super) fn preflight(cluster: &Cluster) -> Result<Option<BrokerVersions>, ConnectorError> {
    if cluster.is_plaintext() {
        return BrokerVersions::probe(&cluster.brokers).map(Some);
    }
    let brokers = cluster.brokers.as_str();
    let consumer: BaseConsumer<FirstError> = client_config(cluster)?
        .create_with_context(FirstError::default())
        .map_err(|e| kafka_error(brokers, "creating a client", e))?;
    // Short attempts, serving the client's events between them: a failed
    // handshake or login is reported as an event, not by the request.
    let deadline = std::time::Instant::now() + PREFLIGHT_TIMEOUT;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match consumer.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(_) => return Ok(None),
            Err(e) => last = Some(e.to_string()),
        }
        // Serves what is queued (logs and errors) for a moment; an error
        // event comes back from the poll itself.
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            let mut first = consumer
                .context()
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| redact(&e.to_string()));
        }
        let first = consumer
            .context()
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(cause) = first.filter(|c| is_auth_failure(c) || is_tls_failure(c)) {
            return Err(preflight_error(cluster, &cause));
        }
    }
    let first = consumer
        .context()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let cause = first.or(last).unwrap_or_else(|| "no answer".to_owned());
    Err(preflight_error(cluster, &cause))
}

fn preflight_error(cluster: &Cluster, cause: &str) -> ConnectorError {
    let what = match cluster.security_protocol().as_str() {
        "sasl_ssl" | "sasl_plaintext" if is_auth_failure(cause) => {
            "authentication failed (check sasl.mechanism, sasl.username and sasl.password)"
        }
        "ssl" | "sasl_ssl" if is_tls_failure(cause) => {
            "the TLS handshake failed (check ssl.ca.location and the client certificate)"
        }
        _ => "cannot reach the cluster",
    };
    error(&cluster.brokers, format!("{what}: {cause}"))
}

/// How long the pre-flight metadata request may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);

fn is_auth_failure(cause: &str) -> bool {
    let cause = cause.to_ascii_lowercase();
    cause.contains("authentication") || cause.contains("sasl")
}

fn is_tls_failure(cause: &str) -> bool {
    let cause = cause.to_ascii_lowercase();
    cause.contains("ssl") || cause.contains("certificate") || cause.contains("handshake")
}

/// Keeps the first error librdkafka reports, for the pre-flight's message.
#[derive(Default)]
struct FirstError(Mutex<Option<String>>);

impl ClientContext for FirstError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", fac, ?level, "{}", redact(message));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| redact(&format!("{reason}: {error}")));
    }
}

impl ConsumerContext for FirstError {}

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
        let message = &redact(message);
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
        let cause = redact(&format!("{reason}: {error}"));
        // A failed authentication is reported here only; it may be a
        // password being rotated, so it counts as an outage, which ends in
        // an error after the retry timeout.
        if is_auth_failure(&cause) {
            self.outage.failed(&cause);
            return;
        }
        // Fatal errors come back from the call that failed, which says
        // more; they are no outage to retry.
        if fatal(&error) {
            tracing::debug!("{cause}");
            return;
        }
        self.outage.failed(&cause);
    }
}

/// How long a client's broker may fail to answer before the client is
/// given its bootstrap servers again, and how often after that while the
/// failures last ([`Rebootstrap`]).
const REBOOTSTRAP_AFTER: Duration = Duration::from_secs(10);
const REBOOTSTRAP_EVERY: Duration = Duration::from_secs(30);

/// Gives a client its bootstrap servers again once its broker has not
/// answered for [`REBOOTSTRAP_AFTER`], and every [`REBOOTSTRAP_EVERY`]
/// after. librdkafka drops a broker that a metadata answer leaves out, and
/// a fenced broker (shutting down, or back from a stall until its
/// controller hears from it) leaves itself out: with one broker, the
/// client then knows none, and asks nobody again until its own re-bootstrap
/// (`metadata.recovery.rebootstrap.trigger.ms`, five minutes). A consumer
/// stops reading; a producer holds its records until they time out. While
/// the broker is only down, this costs a connection attempt, and the next
/// metadata answer drops the extra handle.
pub(super) struct Rebootstrap {
    /// Which client, for the log: "reader" or "writer".
    client: &'static str,
    last: Option<Instant>,
}

impl Rebootstrap {
    pub(super) fn new(client: &'static str) -> Rebootstrap {
        Rebootstrap { client, last: None }
    }

    /// Gives `client` the bootstrap servers `brokers` again if `outage`
    /// has lasted long enough and it was not done too recently.
    pub(super) fn maybe<C: ClientContext>(
        &mut self,
        client: &Client<C>,
        outage: &Outage,
        brokers: &str,
    ) {
        let Some(failing) = outage.failing_for() else {
            return;
        };
        let due = !matches!(self.last, Some(at) if at.elapsed() < REBOOTSTRAP_EVERY);
        if failing < REBOOTSTRAP_AFTER || !due {
            return;
        }
        self.last = Some(Instant::now());
        let Ok(list) = std::ffi::CString::new(brokers) else {
            return;
        };
        tracing::warn!(
            "no answer from Kafka for {:.0} s: giving the {} its bootstrap servers again",
            failing.as_secs_f64(),
            self.client
        );
        // SAFETY: the client pointer lives as long as `client`, and
        // librdkafka copies the list; the call is safe from any thread.
        unsafe {
            rdkafka::bindings::rd_kafka_brokers_add(client.native_ptr(), list.as_ptr());
        }
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
