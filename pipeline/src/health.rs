//! The health checks served beside the metrics page.
//!
//! - `/healthz`, live: the workers are making progress. It fails only
//!   when records are in flight and the workers have finished none of
//!   them, nor run any task, for [`Health::stuck_after`]: a stage that
//!   never returns, on every worker. An idle fila is live.
//! - `/readyz`, ready: the run is reading its source, and the source says
//!   it is consuming (for Kafka: the group has given this member its
//!   partitions, and no rebalance is taking them away). Not ready while
//!   starting and while draining at the end.
//!
//! Each answers `200 ok`, or `503` with the reason in the body.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use fila_runtime::Runtime;
use parking_lot::Mutex;

use crate::counters::{Counters, Phase};
use crate::metrics::Answer;

/// How long records may sit in flight with no task run before `/healthz`
/// fails, by default: well above the time of any one record of a job
/// that is meant to stream.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(120);

/// The checks of one run.
pub struct Health<'a> {
    rt: &'a Runtime,
    counters: &'a Counters,
    pub stuck_after: Duration,
    /// The runtime's counts when they last moved, and when that was.
    last: Mutex<Progress>,
}

#[derive(Clone, Copy)]
struct Progress {
    tasks_run: u64,
    finished: u64,
    since: Instant,
}

impl<'a> Health<'a> {
    pub fn new(rt: &'a Runtime, counters: &'a Counters, stuck_after: Duration) -> Health<'a> {
        let stats = rt.stats();
        Health {
            rt,
            counters,
            stuck_after,
            last: Mutex::new(Progress {
                tasks_run: stats.tasks_run(),
                finished: stats.completed + stats.failed,
                since: Instant::now(),
            }),
        }
    }

    /// Whether the workers are making progress; why not, if not.
    pub fn live(&self) -> Result<(), String> {
        // Read before the runtime's counts, so that a record submitted
        // meanwhile is not missed and one finished meanwhile is not
        // counted as stuck.
        let submitted = self.counters.submitted.load(Relaxed);
        let stats = self.rt.stats();
        let now = Instant::now();
        let (tasks_run, finished) = (stats.tasks_run(), stats.completed + stats.failed);
        let mut last = self.last.lock();
        let pending = submitted.saturating_sub(finished);
        if tasks_run != last.tasks_run || finished != last.finished || pending == 0 {
            *last = Progress {
                tasks_run,
                finished,
                since: now,
            };
            return Ok(());
        }
        let still = now.saturating_duration_since(last.since);
        if still < self.stuck_after {
            return Ok(());
        }
        Err(format!(
            "the workers have run no task for {}s with {pending} record(s) in flight \
             (--stuck-after {}s): a stage is not returning",
            still.as_secs(),
            self.stuck_after.as_secs()
        ))
    }

    /// Whether the run is consuming; why not, if not.
    pub fn ready(&self) -> Result<(), String> {
        match self.counters.phase() {
            Phase::Starting => Err("starting: not reading yet".into()),
            Phase::Stopping => Err("stopping: draining what is in flight".into()),
            // Every segment's source must be consuming: a re-keyed job
            // reads its input and each repartition topic in groups of
            // their own.
            Phase::Running => self.counters.sources().iter().try_for_each(|status| {
                status
                    .readiness()
                    .map_err(|reason| format!("reading {}: {reason}", status.topic))
            }),
        }
    }

    /// The answer of `/healthz` or `/readyz`; `None` for any other path.
    pub fn answer(&self, path: &str) -> Option<Answer> {
        let check = match path {
            "/healthz" => self.live(),
            "/readyz" => self.ready(),
            _ => return None,
        };
        Some(match check {
            Ok(()) => Answer::text("200 OK", "ok\n"),
            Err(reason) => Answer::text("503 Service Unavailable", format!("{reason}\n")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn runtime() -> Runtime {
        Runtime::builder()
            .workers(fila_runtime::Workers::Count(1.try_into().unwrap()))
            .pin(false)
            .build()
            .unwrap()
    }

    #[test]
    fn an_idle_run_is_live_and_ready_only_while_running() {
        let (rt, counters) = (runtime(), Counters::default());
        let health = Health::new(&rt, &counters, Duration::ZERO);
        assert!(health.live().is_ok());
        assert!(health.ready().unwrap_err().starts_with("starting"));
        counters.set_phase(Phase::Running);
        assert_eq!(health.ready(), Ok(()));
        let status = std::sync::Arc::new(fila_connectors::SourceStatus::starting(
            "fila-input",
            "joining the consumer group",
        ));
        counters.watch_source(status.clone());
        assert_eq!(
            health.ready(),
            Err("reading fila-input: joining the consumer group".into())
        );
        status.set_ready();
        assert_eq!(health.ready(), Ok(()));
        // A re-keyed job: ready only while its repartition topic's source
        // is too.
        let repartition = std::sync::Arc::new(fila_connectors::SourceStatus::starting(
            "g-count-repartition",
            "joining the consumer group",
        ));
        counters.watch_source(repartition.clone());
        assert_eq!(
            health.ready(),
            Err("reading g-count-repartition: joining the consumer group".into())
        );
        repartition.set_ready();
        assert_eq!(health.ready(), Ok(()));
        counters.set_phase(Phase::Stopping);
        assert!(health.ready().unwrap_err().starts_with("stopping"));
        let answer = health.answer("/readyz").unwrap();
        assert_eq!(answer.status, "503 Service Unavailable");
        assert!(answer.body.starts_with("stopping"));
        assert_eq!(health.answer("/healthz").unwrap().status, "200 OK");
        assert_eq!(health.answer("/other"), None);
    }

    #[test]
    fn a_stage_that_never_returns_fails_liveness_after_the_bound() {
        let (rt, counters) = (runtime(), Counters::default());
        // A bound no test outlives, then none: how long the machine takes
        // between two looks does not decide the outcome.
        let mut health = Health::new(&rt, &counters, Duration::from_secs(3600));
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        counters.submitted.store(1, Relaxed);
        rt.admit(
            move |_| {
                started_tx.send(()).unwrap();
                let _ = released.recv();
            },
            |_| {},
        )
        .unwrap();
        started.recv().unwrap();
        assert_eq!(health.live(), Ok(()), "not yet past the bound");
        // A task counts as run once it returns: this one has not, and
        // none has finished since the last look.
        health.stuck_after = Duration::ZERO;
        let reason = health.live().unwrap_err();
        assert!(reason.contains("1 record(s) in flight"), "{reason}");
        release.send(()).unwrap();
        rt.close_and_drain();
        assert_eq!(health.live(), Ok(()), "the record finished");
    }
}
