//! fila against the designs it replaces, on the same burst and the same
//! cores: the thesis's Tokio event loop and a rayon pool, plus fila itself
//! at a chosen window. Every system runs the five naive-Fibonacci stages of
//! the reference message on P pinned threads (the same CPUs as fila's
//! workers), and reports, per message, when it finished relative to the
//! start of the burst (all messages arrive at time 0).
//!
//! The baselines are dev code for comparison; they are not part of fila.

pub mod systems;

use std::time::{Duration, Instant};

pub use fila_pipeline::reference::fib;

/// One message of the burst: the five stage values.
pub type Message = [u32; 5];

/// Runs one stage: the naive Fibonacci of `n`, kept from being optimized
/// away.
pub fn stage(n: u32) -> u64 {
    fib(std::hint::black_box(n))
}

/// All five stages of one message on the calling thread.
pub fn whole_message(m: &Message) {
    for &n in m {
        std::hint::black_box(stage(n));
    }
}

/// What a system reports when one message of a burst has finished.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The message's position in the burst, `0..n`.
    pub index: usize,
    /// The wrapping sum of the message's stage results, as computed by the
    /// system: equal to [`checksum`] only if every stage ran once.
    pub checksum: u64,
    /// When the system saw the message finish.
    pub at: Instant,
}

/// The checksum a message must finish with: the wrapping sum of its stage
/// results, computed here, off every system.
pub fn checksum(message: &Message) -> u64 {
    message.iter().fold(0, |sum, &n| sum.wrapping_add(stage(n)))
}

/// Why a burst's reports do not describe every message exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BurstError {
    /// This message was reported more than once.
    Twice(usize),
    /// This index is not in `0..n` (the second field).
    OutOfRange(usize, usize),
    /// This many messages were never reported.
    Missing(usize),
}

impl std::fmt::Display for BurstError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BurstError::Twice(i) => write!(f, "message {i} finished twice"),
            BurstError::OutOfRange(i, n) => write!(f, "message {i} is not in a burst of {n}"),
            BurstError::Missing(count) => write!(f, "{count} messages never finished"),
        }
    }
}

impl std::error::Error for BurstError {}

/// When each message of a burst finished, measured from the burst's start.
#[derive(Debug, Clone)]
pub struct BurstTimes {
    /// Per message, in burst order: how long after the start it finished.
    pub done: Vec<Duration>,
    /// Per message, in burst order: the checksum the system reported.
    pub checksums: Vec<u64>,
}

impl BurstTimes {
    /// Collects what a system reported for a burst of `n`. Fails unless
    /// every message in `0..n` finished exactly once.
    pub fn try_from_finished(
        start: Instant,
        finished: Vec<Finished>,
        n: usize,
    ) -> Result<BurstTimes, BurstError> {
        let mut seen = vec![false; n];
        let mut done = vec![Duration::ZERO; n];
        let mut checksums = vec![0; n];
        for f in finished {
            let i = f.index;
            match seen.get_mut(i) {
                None => return Err(BurstError::OutOfRange(i, n)),
                Some(true) => return Err(BurstError::Twice(i)),
                Some(seen) => *seen = true,
            }
            done[i] = f.at.saturating_duration_since(start);
            checksums[i] = f.checksum;
        }
        match seen.iter().filter(|s| !**s).count() {
            0 => Ok(BurstTimes { done, checksums }),
            missing => Err(BurstError::Missing(missing)),
        }
    }

    /// As [`BurstTimes::try_from_finished`], for the systems' own use: a
    /// system that loses or repeats a message is broken, and the run stops.
    pub fn from_finished(start: Instant, finished: Vec<Finished>, n: usize) -> BurstTimes {
        Self::try_from_finished(start, finished, n).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn makespan(&self) -> Duration {
        self.done.iter().copied().max().unwrap_or_default()
    }

    pub fn mean(&self) -> Duration {
        let total: Duration = self.done.iter().sum();
        total / self.done.len().max(1) as u32
    }
}

/// The median of `xs` (the mean of the middle two for an even count); NaN
/// for none. Tables quote it over rounds so that one slow round on a
/// shared machine does not move the figure.
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[mid],
        _ => (xs[mid - 1] + xs[mid]) / 2.0,
    }
}

/// The CPUs the P threads of every system are pinned to: the first P of
/// the process's allowed CPUs, as fila pins its workers.
pub fn cpus(p: usize) -> Vec<Option<usize>> {
    let allowed = fila_runtime::allowed_cpus();
    (0..p)
        .map(|i| (!allowed.is_empty()).then(|| allowed[i % allowed.len()]))
        .collect()
}

pub fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, index: usize, ms: u64) -> Finished {
        Finished {
            index,
            checksum: index as u64,
            at: start + Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_burst_reported_once_per_message_is_accepted_in_burst_order() {
        let start = Instant::now();
        let times =
            BurstTimes::try_from_finished(start, vec![at(start, 1, 20), at(start, 0, 10)], 2)
                .unwrap();
        assert_eq!(
            times.done,
            [Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(times.checksums, [0, 1]);
        assert_eq!(times.makespan(), Duration::from_millis(20));
        assert_eq!(times.mean(), Duration::from_millis(15));
    }

    #[test]
    fn median_takes_the_middle_of_sorted_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_repeated_missing_or_foreign_message_is_refused() {
        let start = Instant::now();
        let twice = vec![at(start, 0, 1), at(start, 1, 2), at(start, 0, 3)];
        assert_eq!(
            BurstTimes::try_from_finished(start, twice, 2).unwrap_err(),
            BurstError::Twice(0)
        );
        let missing = vec![at(start, 2, 1)];
        assert_eq!(
            BurstTimes::try_from_finished(start, missing, 3).unwrap_err(),
            BurstError::Missing(2)
        );
        let foreign = vec![at(start, 5, 1)];
        assert_eq!(
            BurstTimes::try_from_finished(start, foreign, 3).unwrap_err(),
            BurstError::OutOfRange(5, 3)
        );
    }
}
