//! Which workers are searching for work, which are asleep, and how a
//! producer of work wakes one. The protocol, and why no wake-up is lost, is
//! in `sleep.md`.

use crate::sync::{AtomicU64, Mutex, Ordering};

/// Packed idle state: `| sleeping:32 | searching:32 |`.
///
/// One word, so that a producer learns from a single RMW both whether
/// anybody sleeps and whether a searching worker will find its work anyway.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct State(u64);

impl State {
    const SEARCHING_MASK: u64 = (1 << 32) - 1;
    const SEARCHING_ONE: u64 = 1;
    const SLEEPING_SHIFT: u32 = 32;
    const SLEEPING_ONE: u64 = 1 << Self::SLEEPING_SHIFT;

    /// Workers between `try_start_searching` and `stop_searching`.
    pub(crate) fn searching(self) -> u64 {
        self.0 & Self::SEARCHING_MASK
    }

    /// Workers on the sleepers list.
    pub(crate) fn sleeping(self) -> u64 {
        self.0 >> Self::SLEEPING_SHIFT
    }

    fn with_one_more_searcher(self) -> State {
        debug_assert!(self.searching() < Self::SEARCHING_MASK, "searcher overflow");
        State(self.0 + Self::SEARCHING_ONE)
    }
}

pub(crate) struct Idle {
    state: AtomicU64,
    /// Workers that announced they are going to park, most recent last.
    sleepers: Mutex<Vec<usize>>,
    workers: u64,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Idle {
        Idle {
            state: AtomicU64::new(0),
            sleepers: Mutex::new(Vec::with_capacity(workers)),
            workers: workers as u64,
        }
    }

    fn load(&self) -> State {
        State(self.state.load(Ordering::Acquire))
    }

    /// Lets the caller search (spin over every queue) if fewer than half the
    /// workers already do; with one worker, that one may. Returns true if
    /// the caller is now searching: it must call `stop_searching` when it
    /// stops, whether it found work or not.
    pub(crate) fn try_start_searching(&self) -> bool {
        let mut cur = self.load();
        loop {
            if 2 * cur.searching() >= self.workers {
                return false;
            }
            // AcqRel like every RMW on the word: see sleep.md.
            match self.state.compare_exchange_weak(
                cur.0,
                cur.with_one_more_searcher().0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Ends the caller's search. Returns true if it was the last searching
    /// worker: if it found work, the caller must then call `Shared::notify_one`,
    /// since producers skipped their wake-ups while it searched.
    pub(crate) fn stop_searching(&self) -> bool {
        let prev = State(self.state.fetch_sub(State::SEARCHING_ONE, Ordering::AcqRel));
        debug_assert!(prev.searching() > 0, "searcher underflow");
        prev.searching() == 1
    }

    /// Puts worker `me` on the sleepers list. The caller must look for work
    /// once more after this returns, and then either `cancel` or park.
    pub(crate) fn announce(&self, me: usize) {
        let mut sleepers = self.sleepers.lock();
        debug_assert!(!sleepers.contains(&me), "worker {me} announced twice");
        sleepers.push(me);
        // AcqRel RMW: it is ordered, in the word's modification order,
        // against every producer's RMW in `wake_one`. See sleep.md.
        self.state.fetch_add(State::SLEEPING_ONE, Ordering::AcqRel);
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
                // Under the lock, like every change of `sleeping`; AcqRel
                // keeps it in the release sequence that `wake_one` reads.
                self.state.fetch_sub(State::SLEEPING_ONE, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// Called after work was pushed. Takes one sleeper off the list and
    /// returns it, unless nobody sleeps or some worker is searching (it
    /// will find the work). The caller must unpark the worker returned.
    pub(crate) fn wake_one(&self) -> Option<usize> {
        // Must be an RMW, not a load: it reads the latest value in the
        // word's modification order, and its release half carries the push
        // that came before it to any worker whose announcement, or end of
        // search, comes after it. A plain SeqCst load would need a SeqCst
        // fence on both sides, which loom does not model.
        let now = State(self.state.fetch_add(0, Ordering::AcqRel));
        if now.sleeping() == 0 || now.searching() > 0 {
            return None;
        }
        self.wake_one_slow()
    }

    #[cold]
    fn wake_one_slow(&self) -> Option<usize> {
        let mut sleepers = self.sleepers.lock();
        let woken = sleepers.pop()?;
        // Under the lock; AcqRel for the same reason as in `cancel`.
        self.state.fetch_sub(State::SLEEPING_ONE, Ordering::AcqRel);
        Some(woken)
    }

    /// Empties the list for shutdown. The caller must unpark every worker
    /// returned.
    pub(crate) fn take_all(&self) -> Vec<usize> {
        let mut sleepers = self.sleepers.lock();
        // Under the lock; AcqRel for the same reason as in `cancel`.
        self.state.fetch_sub(
            State::SLEEPING_ONE * sleepers.len() as u64,
            Ordering::AcqRel,
        );
        std::mem::take(&mut *sleepers)
    }
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;

    #[test]
    fn state_fields_do_not_overlap() {
        let s = State(State::SLEEPING_ONE * 3).with_one_more_searcher();
        assert_eq!((s.sleeping(), s.searching()), (3, 1));
        let full = State(State::SEARCHING_MASK);
        assert_eq!((full.sleeping(), full.searching()), (0, (1 << 32) - 1));
        assert_eq!(State::SEARCHING_MASK & State::SLEEPING_ONE, 0);
    }

    #[test]
    fn at_most_half_the_workers_search_and_the_last_one_out_is_told() {
        let idle = Idle::new(4);
        assert!(idle.try_start_searching());
        assert!(idle.try_start_searching());
        assert!(!idle.try_start_searching(), "a third of four searched");
        assert!(!idle.stop_searching());
        assert!(idle.stop_searching(), "the last searcher was not told");
        let alone = Idle::new(1);
        assert!(alone.try_start_searching(), "a lone worker may search");
        assert!(!alone.try_start_searching());
    }

    #[test]
    fn a_producer_wakes_a_sleeper_only_when_nobody_searches() {
        let idle = Idle::new(2);
        assert_eq!(idle.wake_one(), None);
        idle.announce(1);
        assert!(idle.try_start_searching());
        assert_eq!(
            idle.wake_one(),
            None,
            "woke a sleeper while a worker searched"
        );
        idle.stop_searching();
        assert_eq!(idle.wake_one(), Some(1));
        assert_eq!(idle.load().sleeping(), 0);
        idle.announce(0);
        assert!(!idle.cancel(1));
        assert!(idle.cancel(0));
        assert_eq!(idle.take_all(), Vec::<usize>::new());
    }
}
