//! Which CPUs the workers run on.
//!
//! The allowed CPUs are read once, from the process's affinity mask, before
//! any worker is pinned (pinning changes the calling thread's mask, so
//! reading it later would be wrong). Worker i is pinned to the i-th CPU of
//! that list. Physical-core mode keeps the first allowed CPU of each core,
//! as the kernel reports cores in sysfs.

use std::collections::HashSet;
use std::num::NonZeroUsize;

/// How many workers to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per physical core the process may use (hyper-thread siblings
    /// skipped). Falls back to `Logical` where the topology is unreadable.
    Physical,
    /// One per CPU in the process's affinity mask.
    Logical,
    /// Exactly this many. Beyond the number of allowed CPUs, pinning wraps
    /// around the list.
    Count(NonZeroUsize),
}

impl std::str::FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "physical" => Ok(Workers::Physical),
            "logical" => Ok(Workers::Logical),
            n => n
                .parse::<NonZeroUsize>()
                .map(Workers::Count)
                .map_err(|_| format!("expected `physical`, `logical` or a count >= 1, got `{n}`")),
        }
    }
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Physical => f.write_str("physical"),
            Workers::Logical => f.write_str("logical"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

/// Of `allowed`, the first CPU of each physical core. `None` if the
/// topology cannot be read.
pub fn physical_cpus(allowed: &[usize]) -> Option<Vec<usize>> {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for &cpu in allowed {
        let read = |what: &str| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}"))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let core = (read("physical_package_id")?, read("core_id")?);
        if seen.insert(core) {
            firsts.push(cpu);
        }
    }
    Some(firsts)
}

/// The CPU list that worker i is pinned against, and the worker count.
pub(crate) fn plan(workers: Workers) -> (Vec<usize>, usize) {
    let allowed = allowed_cpus();
    let cpus = match workers {
        Workers::Physical => physical_cpus(&allowed).unwrap_or_else(|| allowed.clone()),
        _ => allowed,
    };
    let count = match workers {
        Workers::Count(n) => n.get(),
        _ => cpus.len().max(1),
    };
    (cpus, count)
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;

    #[test]
    fn workers_parse_names_and_counts() {
        assert_eq!("physical".parse(), Ok(Workers::Physical));
        assert_eq!("logical".parse(), Ok(Workers::Logical));
        assert_eq!(
            "3".parse(),
            Ok(Workers::Count(NonZeroUsize::new(3).unwrap()))
        );
        assert!("0".parse::<Workers>().is_err());
        assert!("many".parse::<Workers>().is_err());
    }

    #[test]
    fn physical_cpus_are_a_subset_of_allowed() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        if let Some(physical) = physical_cpus(&allowed) {
            assert!(!physical.is_empty());
            assert!(physical.iter().all(|c| allowed.contains(c)));
        }
    }
}
