//! Which workers are asleep, and how a producer of work wakes one.
//! The protocol, and why no wake-up is lost, is in `sleep.md`.

use crate::sync::{AtomicUsize, Mutex, Ordering};

pub(crate) struct Idle {
    /// How many workers are on `sleepers`. Producers read it on every push;
    /// when it is zero they take no lock.
    sleeping: AtomicUsize,
    /// Workers that announced they are going to park, most recent last.
    sleepers: Mutex<Vec<usize>>,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Idle {
        Idle {
            sleeping: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::with_capacity(workers)),
        }
    }

    /// Puts worker `me` on the sleepers list. The caller must look for work
    /// once more after this returns, and then either `cancel` or park.
    pub(crate) fn announce(&self, me: usize) {
        let mut sleepers = self.sleepers.lock();
        debug_assert!(!sleepers.contains(&me), "worker {me} announced twice");
        sleepers.push(me);
        // AcqRel RMW: it is ordered, in `sleeping`'s modification order,
        // against every producer's RMW in `wake_one`. See sleep.md.
        self.sleeping.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes worker `me` back off the list after its re-check found work.
    ///
    /// Returns true if `me` was still listed: it is awake and runs on.
    /// Returns false if a producer already took it off and is unparking it:
    /// the caller must park once to consume that token.
    pub(crate) fn cancel(&self, me: usize) -> bool {
        let mut sleepers = self.sleepers.lock();
        match sleepers.iter().position(|&w| w == me) {
            Some(at) => {
                sleepers.swap_remove(at);
                // Under the lock, like every change of `sleeping` but the
                // producers' read; AcqRel keeps it in the same release
                // sequence that `wake_one`'s RMW reads from.
                self.sleeping.fetch_sub(1, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// Called after work was pushed. Takes one sleeper off the list and
    /// returns it; the caller must unpark it.
    pub(crate) fn wake_one(&self) -> Option<usize> {
        // Must be an RMW, not a load: it reads the latest value in
        // `sleeping`'s modification order, and its release half carries the
        // push that came before it to any worker whose announcement comes
        // after it. A plain SeqCst load would need a SeqCst fence on both
        // sides, which loom does not model.
        if self.sleeping.fetch_add(0, Ordering::AcqRel) == 0 {
            return None;
        }
        self.wake_one_slow()
    }

    #[cold]
    fn wake_one_slow(&self) -> Option<usize> {
        let mut sleepers = self.sleepers.lock();
        let woken = sleepers.pop()?;
        // Under the lock; AcqRel for the same reason as in `cancel`.
        self.sleeping.fetch_sub(1, Ordering::AcqRel);
        Some(woken)
    }

    /// Empties the list for shutdown. The caller must unpark every worker
    /// returned.
    pub(crate) fn take_all(&self) -> Vec<usize> {
        let mut sleepers = self.sleepers.lock();
        // Under the lock; AcqRel for the same reason as in `cancel`.
        self.sleeping.fetch_sub(sleepers.len(), Ordering::AcqRel);
        std::mem::take(&mut *sleepers)
    }
}
