//! The physical limit a burst is measured against (DESIGN.md section 5).
//!
//! Nothing here schedules anything. It lives in the runtime so that the
//! pipeline, the benches and the examples all compute the ideal the same
//! way.

use std::time::{Duration, Instant};

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
/// they are: |before − after| / mean. Above 0.10 the run was noisy.
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
        assert!((i.throughput() - 2.0 / 0.00315).abs() < 1e-6);
    }
}
