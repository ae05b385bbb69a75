//! Transient broker faults, handled the same way on both clients.
//!
//! A broker that restarts, or stops answering for a while, is not a reason
//! for fila to stop. Each client keeps an [`Outage`]: the first failure of
//! a run of failures is logged once with its cause, later ones only at
//! debug level, and the first success after them logs how long the run
//! lasted. A run that lasts longer than the retry timeout
//! (`--kafka-retry-timeout`) becomes an error, which stops the run with
//! exit 1 and names the first cause and the last.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error;
use crate::ConnectorError;

/// How long a broker may stay unreachable before fila gives up: long
/// enough for a broker restart or a leader election, short enough that a
/// broker that is gone for good is reported while someone still watches.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// The wait before the first retry; it doubles after each failure...
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// ...up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One run of failures.
#[derive(Debug)]
struct Run {
    since: Instant,
    first: String,
    last: String,
    failures: u32,
}

/// A client's current run of transient failures, if any. Shared by the
/// client's threads (librdkafka reports errors from its own).
#[derive(Debug)]
pub(crate) struct Outage {
    brokers: String,
    timeout: Duration,
    /// Whether `run` is `Some`: lets the per-record success path skip the
    /// lock while nothing is failing.
    failing: AtomicBool,
    run: Mutex<Option<Run>>,
}

impl Outage {
    pub fn new(brokers: &str, timeout: Duration) -> Outage {
        Outage {
            brokers: brokers.to_owned(),
            timeout,
            failing: AtomicBool::new(false),
            run: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Run>> {
        // A `Run` is consistent at every step, so a panic elsewhere while
        // holding the lock leaves it usable.
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transient failure, saying what failed and why. The first of a
    /// run is logged as a warning; the rest at debug level.
    pub fn failed(&self, cause: &dyn Display) {
        let cause = cause.to_string();
        let mut run = self.lock();
        match &mut *run {
            Some(run) => {
                run.failures += 1;
                tracing::debug!("{cause}; still retrying");
                run.last = cause;
            }
            None => {
                tracing::warn!(
                    "{cause}; retrying for up to {:?} (--kafka-retry-timeout)",
                    self.timeout
                );
                *run = Some(Run {
                    since: Instant::now(),
                    last: cause.clone(),
                    first: cause,
                    failures: 1,
                });
                self.failing.store(true, Ordering::Release);
            }
        }
    }

    /// Something worked: ends the current run of failures, if any.
    pub fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        if let Some(run) = self.lock().take() {
            self.failing.store(false, Ordering::Release);
            tracing::info!(
                "Kafka at {} answers again, after {:.1} s and {} failed attempt(s)",
                self.brokers,
                run.since.elapsed().as_secs_f64(),
                run.failures
            );
        }
    }

    /// The retry timeout: how long a run of failures may last.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// How long the current run of failures has lasted, if there is one.
    pub fn failing_for(&self) -> Option<Duration> {
        self.lock().as_ref().map(|run| run.since.elapsed())
    }

    /// How long to wait before the next attempt: doubling from 100 ms with
    /// each failure of the run, up to 5 s. Zero when nothing is failing.
    pub fn backoff(&self) -> Duration {
        match &*self.lock() {
            None => Duration::ZERO,
            Some(run) => backoff_after(run.failures),
        }
    }

    /// An error once the current run of failures has lasted longer than
    /// the retry timeout.
    pub fn check(&self) -> Result<(), ConnectorError> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), ConnectorError> {
        match &*self.lock() {
            Some(run) if now.saturating_duration_since(run.since) > self.timeout => {
                let last = if run.last == run.first {
                    String::new()
                } else {
                    format!("; the last error: {}", run.last)
                };
                Err(error(
                    &self.brokers,
                    format!(
                        "gave up after {:?} of failures (--kafka-retry-timeout); the first: {}{last}",
                        self.timeout, run.first
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

fn backoff_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_turns_into_an_error_only_after_the_timeout() {
        let outage = Outage::new("127.0.0.1:1", Duration::from_secs(10));
        assert!(outage.check().is_ok());
        outage.failed(&"fetching: connection refused");
        outage.failed(&"committing: all brokers down");
        let since = outage.lock().as_ref().unwrap().since;
        assert!(outage.check_at(since + Duration::from_secs(9)).is_ok());
        let e = outage
            .check_at(since + Duration::from_secs(11))
            .unwrap_err()
            .to_string();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(e.contains("fetching: connection refused"), "{e}");
        assert!(e.contains("committing: all brokers down"), "{e}");
        assert!(e.contains("--kafka-retry-timeout"), "{e}");
    }

    #[test]
    fn a_success_ends_the_run_and_the_next_failure_starts_a_new_one() {
        let outage = Outage::new("b:9092", Duration::from_secs(10));
        outage.failed(&"fetching: refused");
        let first = outage.lock().as_ref().unwrap().since;
        outage.succeeded();
        assert!(!outage.is_failing());
        assert!(outage.check_at(first + Duration::from_secs(60)).is_ok());
        outage.failed(&"fetching: refused");
        assert!(outage.is_failing());
        assert_eq!(outage.lock().as_ref().unwrap().failures, 1);
    }

    #[test]
    fn backoff_doubles_from_100_ms_up_to_5_s() {
        let ms: Vec<u128> = (1..=9).map(|n| backoff_after(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
        let outage = Outage::new("b:9092", Duration::from_secs(10));
        assert_eq!(outage.backoff(), Duration::ZERO);
        outage.failed(&"x: y");
        outage.failed(&"x: y");
        assert_eq!(outage.backoff(), Duration::from_millis(200));
    }
}
