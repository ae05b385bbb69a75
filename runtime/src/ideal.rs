//! The physical limit a burst is measured against
//! (`docs/design/measurement.md`).
//!
//! Nothing here schedules anything. It lives in the runtime so that the
//! pipeline, the benches and the examples all compute the ideal the same
//! way.

use std::time::{Duration, Instant};

/// Timed calibration messages per phase (before, and again after, the
/// run), over all threads: at least this many. Each phase must time at
/// least 100 for w to be worth quoting; 400 keeps a moment of noise on a
/// shared machine from weighing much.
pub const CALIBRATION_MESSAGES: usize = 400;
const _: () = assert!(CALIBRATION_MESSAGES >= 100, "too few to time w");

/// Untimed messages each calibration thread runs first, so that page
/// faults, cold caches and clock ramp-up do not inflate the first w.
pub const WARM_UP_MESSAGES_PER_THREAD: usize = 10;

/// The calibration spread (|w_before − w_after| / mean) above which a run
/// is called noisy and its ratios are not to be trusted.
pub const NOISY_SPREAD: f64 = 0.10;

/// Timed calibration messages per thread for a run of `burst` messages on
/// `threads` threads: [`CALIBRATION_MESSAGES`] or a tenth of the burst,
/// whichever is more, split evenly and rounded up. At least 1.
pub fn calibration_messages_per_thread(burst: usize, threads: usize) -> usize {
    CALIBRATION_MESSAGES
        .max(burst / 10)
        .div_ceil(threads.max(1))
        .max(1)
}

/// Work per message, w, measured with `threads` plain threads running in
/// parallel, with no scheduler and nothing shared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub threads: usize,
    pub messages: usize,
    pub elapsed: Duration,
}

impl Calibration {
    /// w = P × elapsed / messages: the cost of one message while every
    /// core is busy.
    pub fn work_per_message(&self) -> Duration {
        self.elapsed
            .mul_f64(self.threads as f64 / self.messages as f64)
    }
}

/// Runs `per_thread` messages on each of `cpus.len()` threads at once.
/// Thread i is pinned to `cpus[i]` when that is `Some`: pass the workers'
/// CPUs (`Stats::workers[i].cpu`) so that the threads run where the workers
/// ran. `message(i)` runs one whole message (every stage), where `i` numbers
/// the messages of its thread.
pub fn calibrate<F>(cpus: &[Option<usize>], per_thread: usize, message: F) -> Calibration
where
    F: Fn(usize) + Sync,
{
    assert!(!cpus.is_empty() && per_thread > 0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for &cpu in cpus {
            let message = &message;
            s.spawn(move || {
                if let Some(id) = cpu {
                    // Best effort, as for the workers themselves.
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                for i in 0..per_thread {
                    message(i);
                }
            });
        }
    });
    Calibration {
        threads: cpus.len(),
        messages: cpus.len() * per_thread,
        elapsed: start.elapsed(),
    }
}

/// w from a calibration before and one after the burst, and how far apart
/// they are: |before − after| / mean. Above [`NOISY_SPREAD`] the run was
/// noisy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ideal {
    pub workers: usize,
    pub work_per_message: Duration,
    pub spread: f64,
}

impl Ideal {
    pub fn from_calibrations(workers: usize, before: Calibration, after: Calibration) -> Ideal {
        let (b, a) = (
            before.work_per_message().as_secs_f64(),
            after.work_per_message().as_secs_f64(),
        );
        let mean = (a + b) / 2.0;
        Ideal {
            workers,
            work_per_message: Duration::from_secs_f64(mean),
            spread: if mean > 0.0 {
                (a - b).abs() / mean
            } else {
                0.0
            },
        }
    }

    /// Whether the two calibrations differ by more than [`NOISY_SPREAD`].
    pub fn is_noisy(&self) -> bool {
        self.spread > NOISY_SPREAD
    }

    /// P / w.
    pub fn throughput(&self) -> f64 {
        self.workers as f64 / self.work_per_message.as_secs_f64()
    }

    /// The mean latency of a burst of `n` messages that all arrive at time
    /// 0 and are served in arrival order by P workers: message i finishes at
    /// (⌊i/P⌋ + 1)·w. No scheduler does better for identical messages.
    pub fn mean_latency(&self, n: usize) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let p = self.workers;
        let rounds: u128 = (0..n).map(|i| (i / p + 1) as u128).sum();
        self.work_per_message.mul_f64(rounds as f64 / n as f64)
    }
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;

    fn ideal(workers: usize, w_ms: u64) -> Ideal {
        Ideal {
            workers,
            work_per_message: Duration::from_millis(w_ms),
            spread: 0.0,
        }
    }

    #[test]
    fn ideal_mean_matches_the_arrival_order_formula() {
        // 4 messages on 2 workers: finish at w, w, 2w, 2w -> mean 1.5w.
        assert_eq!(ideal(2, 10).mean_latency(4), Duration::from_millis(15));
        // 3 messages on 2 workers: w, w, 2w -> mean 4w/3.
        let m = ideal(2, 30).mean_latency(3);
        assert_eq!(m, Duration::from_millis(40));
        // Large N: close to half the makespan N·w/P.
        let big = ideal(2, 3).mean_latency(10_000).as_secs_f64();
        let makespan = 10_000.0 * 0.003 / 2.0;
        assert!((big / makespan - 0.5).abs() < 0.001, "{big} vs {makespan}");
    }

    #[test]
    fn work_per_message_scales_with_threads() {
        let c = Calibration {
            threads: 2,
            messages: 200,
            elapsed: Duration::from_millis(300),
        };
        assert_eq!(c.work_per_message(), Duration::from_millis(3));
        let slower = Calibration {
            elapsed: Duration::from_millis(330),
            ..c
        };
        let i = Ideal::from_calibrations(2, c, slower);
        assert!((i.spread - 0.3 / 3.15).abs() < 1e-9);
        assert!(!i.is_noisy(), "a spread of 9.5% is not noisy");
        assert!((i.throughput() - 2.0 / 0.00315).abs() < 1e-6);
        let noisy = Calibration {
            elapsed: Duration::from_millis(340),
            ..c
        };
        assert!(Ideal::from_calibrations(2, c, noisy).is_noisy());
    }

    #[test]
    fn calibration_takes_the_floor_or_a_tenth_of_the_burst() {
        assert_eq!(calibration_messages_per_thread(100, 2), 200);
        assert_eq!(calibration_messages_per_thread(10_000, 2), 500);
        assert_eq!(calibration_messages_per_thread(10_000, 3), 334);
        assert_eq!(calibration_messages_per_thread(0, 0), 400);
    }
}
