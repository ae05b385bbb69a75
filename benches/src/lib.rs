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

/// When each message of a burst finished, measured from the burst's start.
#[derive(Debug, Clone)]
pub struct BurstTimes {
    pub done: Vec<Duration>,
}

impl BurstTimes {
    /// Collects completion instants into offsets from `start`, checking that
    /// every message finished exactly once.
    pub fn from_instants(start: Instant, done: Vec<(usize, Instant)>, n: usize) -> BurstTimes {
        let mut seen = vec![false; n];
        let mut out = vec![Duration::ZERO; n];
        for (i, at) in done {
            assert!(!seen[i], "message {i} finished twice");
            seen[i] = true;
            out[i] = at.saturating_duration_since(start);
        }
        let missing = seen.iter().filter(|s| !**s).count();
        assert_eq!(missing, 0, "{missing} messages never finished");
        BurstTimes { done: out }
    }

    pub fn makespan(&self) -> Duration {
        self.done.iter().copied().max().unwrap_or_default()
    }

    pub fn mean(&self) -> Duration {
        let total: Duration = self.done.iter().sum();
        total / self.done.len().max(1) as u32
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
