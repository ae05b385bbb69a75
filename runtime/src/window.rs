//! The admission window: at most `cap` units in flight. See `window.md` for
//! the protocol and why no blocked admitter is forgotten.

use crate::sync::{AtomicU64, Condvar, Mutex, Ordering};

/// The largest window the packed state can hold.
pub const MAX_WINDOW: usize = State::IN_FLIGHT_MASK as usize;

/// Packed window state: `| closed:1 | waiters:31 | in_flight:32 |`.
///
/// Packing `in_flight` with `waiters` lets a releaser learn, from the value
/// its own `fetch_sub` returns, whether anybody is blocked, without a second
/// load that could race with a new waiter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct State(u64);

impl State {
    const IN_FLIGHT_MASK: u64 = (1 << 32) - 1;
    const WAITERS_SHIFT: u32 = 32;
    const WAITER_ONE: u64 = 1 << Self::WAITERS_SHIFT;
    const WAITERS_MASK: u64 = ((1 << 31) - 1) << Self::WAITERS_SHIFT;
    const CLOSED: u64 = 1 << 63;
    const IN_FLIGHT_ONE: u64 = 1;

    pub(crate) fn in_flight(self) -> u64 {
        self.0 & Self::IN_FLIGHT_MASK
    }

    pub(crate) fn waiters(self) -> u64 {
        (self.0 & Self::WAITERS_MASK) >> Self::WAITERS_SHIFT
    }

    pub(crate) fn is_closed(self) -> bool {
        self.0 & Self::CLOSED != 0
    }

    fn with_one_more_in_flight(self) -> State {
        debug_assert!(
            self.in_flight() < Self::IN_FLIGHT_MASK,
            "in-flight overflow"
        );
        State(self.0 + Self::IN_FLIGHT_ONE)
    }

    fn with_one_more_waiter(self) -> State {
        debug_assert!(self.waiters() < Self::WAITERS_MASK >> Self::WAITERS_SHIFT);
        State(self.0 + Self::WAITER_ONE)
    }

    fn with_one_less_waiter(self) -> State {
        debug_assert!(self.waiters() > 0, "waiter underflow");
        State(self.0 - Self::WAITER_ONE)
    }
}

/// Why a non-blocking admission did not take a slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Refused {
    Full,
    Closed,
}

pub(crate) struct Window {
    state: AtomicU64,
    /// W, which `set_cap` may change while units run (`window.md`,
    /// "Resizing"). A `std` atomic even under loom: every path that sleeps
    /// on it reads it under the lock, and a resize that grows it notifies
    /// under the lock, so the lock, which loom models, orders the two.
    cap: std::sync::atomic::AtomicU64,
    /// Serializes the slow paths: waiters register and sleep under it, and
    /// releasers take it before notifying, so a notification cannot slip in
    /// between a waiter's registration and its wait.
    lock: Mutex<()>,
    admitters: Condvar,
    drained: Condvar,
    /// A statistic, not part of the protocol: a `std` atomic even under
    /// loom, like the counters in `stats.rs`.
    max_in_flight: std::sync::atomic::AtomicU64,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Window {
        assert!(
            (1..=MAX_WINDOW).contains(&cap),
            "window must be in 1..={MAX_WINDOW}"
        );
        Window {
            state: AtomicU64::new(0),
            cap: std::sync::atomic::AtomicU64::new(cap as u64),
            lock: Mutex::new(()),
            admitters: Condvar::new(),
            drained: Condvar::new(),
            max_in_flight: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap_now() as usize
    }

    fn cap_now(&self) -> u64 {
        // Relaxed: a stale W is harmless on the fast paths (window.md,
        // "Resizing"), and the slow path reads it under the lock.
        self.cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes W. Units in flight beyond a smaller W run to the end; no
    /// admission takes a slot until they are below it. A larger W wakes
    /// every blocked admitter, under the lock, so that none sleeps through
    /// the slots it adds.
    pub(crate) fn set_cap(&self, cap: usize) {
        assert!(
            (1..=MAX_WINDOW).contains(&cap),
            "window must be in 1..={MAX_WINDOW}"
        );
        let old = self
            .cap
            .swap(cap as u64, std::sync::atomic::Ordering::Relaxed);
        // Deliberately broken for the loom negative test: a grow that
        // wakes nobody.
        if cap as u64 > old && !crate::broken("grow-skips-notify") {
            let _guard = self.lock.lock();
            self.admitters.notify_all();
        }
    }

    pub(crate) fn load(&self) -> State {
        // Acquire pairs with the AcqRel release below: whoever sees a freed
        // slot also sees what the finished unit's completion wrote.
        State(self.state.load(Ordering::Acquire))
    }

    /// Takes a slot if one is free. Never blocks.
    pub(crate) fn try_acquire(&self) -> Result<(), Refused> {
        let mut cur = self.load();
        loop {
            if cur.is_closed() {
                return Err(Refused::Closed);
            }
            if cur.in_flight() >= self.cap_now() {
                return Err(Refused::Full);
            }
            let next = cur.with_one_more_in_flight();
            match self.state.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.note_in_flight(next.in_flight());
                    return Ok(());
                }
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Takes a slot, blocking the caller while the window is full. Returns
    /// `Err` once the window is closed, including while blocked.
    pub(crate) fn acquire(&self) -> Result<(), Refused> {
        match self.try_acquire() {
            Err(Refused::Full) => self.acquire_slow(),
            done => done,
        }
    }

    #[cold]
    fn acquire_slow(&self) -> Result<(), Refused> {
        let mut guard = self.lock.lock();
        let mut registered = false;
        let mut cur = self.load();
        loop {
            let next = if cur.is_closed() {
                if registered {
                    self.state.fetch_sub(State::WAITER_ONE, Ordering::AcqRel);
                }
                return Err(Refused::Closed);
            } else if cur.in_flight() < self.cap_now() {
                let taken = cur.with_one_more_in_flight();
                if registered {
                    taken.with_one_less_waiter()
                } else {
                    taken
                }
            } else if !registered {
                cur.with_one_more_waiter()
            } else {
                // Registered and still full: a releaser will see us in the
                // state it swaps out and notify under the lock.
                self.admitters.wait(&mut guard);
                cur = self.load();
                continue;
            };
            match self
                .state
                .compare_exchange(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next.in_flight() > cur.in_flight() => {
                    self.note_in_flight(next.in_flight());
                    return Ok(());
                }
                Ok(_) => {
                    // Registered in the same atomic step that saw the window
                    // full, so every later release sees `waiters > 0`.
                    registered = true;
                    cur = next;
                }
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Frees `slots` slots at once (a worker releases the units it
    /// completed in batches; see `window.md`). Wakes one blocked admitter if
    /// there is one and enough slots are now free, and the closer when these
    /// were the last units of a closed window.
    ///
    /// Returns true if this release drained a closed window: the caller must
    /// tell the runtime (`Shared::on_drained`), which stops the workers if
    /// nobody waits to do it.
    #[must_use = "the release that drains a closed window may have to stop the workers"]
    pub(crate) fn release(&self, slots: u64) -> bool {
        debug_assert!(slots > 0, "released nothing");
        // AcqRel: release publishes the finished units' effects to the next
        // admitter; acquire makes the waiter count we read current.
        let prev = State(
            self.state
                .fetch_sub(State::IN_FLIGHT_ONE * slots, Ordering::AcqRel),
        );
        debug_assert!(
            prev.in_flight() >= slots,
            "released a slot that was not taken"
        );
        if self.wakes_admitter(prev, slots) || prev.is_closed() {
            self.release_slow(prev, slots);
        }
        prev.is_closed() && prev.in_flight() == slots
    }

    /// Whether the release of `slots` that replaced `prev` must wake an
    /// admitter: somebody waits, and it left at least `wake_batch` free.
    fn wakes_admitter(&self, prev: State, slots: u64) -> bool {
        let cap = self.cap_now();
        // Saturating: right after W shrank, more than W may be in flight.
        prev.waiters() > 0 && cap.saturating_sub(prev.in_flight() - slots) >= wake_batch(cap)
    }

    /// How many completed units each of `workers` workers may hold before
    /// it releases their slots in one RMW: its share of an eighth of the
    /// window, at least one. All the workers together then withhold fewer
    /// than an eighth of the window (see `window.md`). Taken from W when
    /// asked: a worker asks once, as it starts, so a window that grows
    /// later keeps the smaller batch.
    pub(crate) fn release_batch(&self, workers: usize) -> u64 {
        ((self.cap_now() / 8) / workers.max(1) as u64).max(1)
    }

    #[cold]
    fn release_slow(&self, prev: State, slots: u64) {
        // Taking the lock orders this notification after any waiter that
        // registered before our fetch_sub has gone to sleep.
        let _guard = self.lock.lock();
        if self.wakes_admitter(prev, slots) {
            self.admitters.notify_one();
        }
        if prev.is_closed() && prev.in_flight() == slots {
            self.drained.notify_all();
        }
    }

    /// Refuses every later admission and wakes blocked admitters, who return
    /// `Closed`. Units already admitted run to the end. Returns the state
    /// just before: its `in_flight` is exact, since it comes from the same
    /// RMW that closed the window.
    pub(crate) fn close(&self) -> State {
        let _guard = self.lock.lock();
        let prev = State(self.state.fetch_or(State::CLOSED, Ordering::AcqRel));
        self.admitters.notify_all();
        prev
    }

    /// Blocks until a closed window has no unit in flight.
    pub(crate) fn wait_drained(&self) {
        let mut guard = self.lock.lock();
        debug_assert!(self.load().is_closed(), "drain of an open window");
        while self.load().in_flight() > 0 {
            self.drained.wait(&mut guard);
        }
    }

    fn note_in_flight(&self, now: u64) {
        // Relaxed: a statistic, read only for reporting. A plain load first,
        // so that once the maximum is reached, admissions stop writing to
        // this shared cache line.
        let max = &self.max_in_flight;
        if now > max.load(std::sync::atomic::Ordering::Relaxed) {
            max.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn max_in_flight(&self) -> u64 {
        self.max_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How many free slots wake a blocked admitter, for a window of `cap`: half
/// the window, at least one. A full window then costs its admitter one
/// wake-up per `wake_batch` units instead of one per unit, while the workers
/// still hold at least half the window's work (`window.md`, "Waking in
/// batches", says why half).
fn wake_batch(cap: u64) -> u64 {
    (cap / 2).max(1)
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A window of `cap` with every slot taken, and a thread blocked in
    /// `acquire` on it.
    fn with_blocked_admitter(cap: usize) -> (Arc<Window>, JoinHandle<Result<(), Refused>>) {
        let w = Arc::new(Window::new(cap));
        for _ in 0..cap {
            w.acquire().unwrap();
        }
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.acquire());
        while w.load().waiters() == 0 {
            std::thread::yield_now();
        }
        (w, t)
    }

    #[test]
    fn a_blocked_admitter_is_woken_once_a_batch_of_slots_is_free() {
        assert_eq!(
            (wake_batch(1), wake_batch(3), wake_batch(4), wake_batch(64)),
            (1, 1, 2, 32)
        );
        let (w, t) = with_blocked_admitter(4);
        // One slot free is not yet a batch of two: the admitter stays
        // registered (and asleep, unless it woke spuriously and waits again).
        assert!(!w.release(1));
        assert!(!w.release(1));
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(w.load().in_flight(), 3);
        assert_eq!(w.load().waiters(), 0);
    }

    #[test]
    fn a_batched_release_frees_every_slot_and_reports_the_drain() {
        let w = Window::new(64);
        assert_eq!(
            (w.release_batch(1), w.release_batch(2), w.release_batch(16)),
            (8, 4, 1)
        );
        for _ in 0..10 {
            w.acquire().unwrap();
        }
        assert!(!w.release(4));
        assert_eq!(w.load().in_flight(), 6);
        w.close();
        assert!(!w.release(5), "one slot is still taken");
        assert!(w.release(1), "the last release drains the closed window");
        assert_eq!(w.load().in_flight(), 0);
    }

    #[test]
    fn state_fields_do_not_overlap() {
        let s = State(0)
            .with_one_more_in_flight()
            .with_one_more_in_flight()
            .with_one_more_waiter();
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.waiters(), 1);
        assert!(!s.is_closed());
        let closed = State(s.0 | State::CLOSED);
        assert!(closed.is_closed());
        assert_eq!(closed.in_flight(), 2);
        assert_eq!(closed.waiters(), 1);
        let full = State(State::IN_FLIGHT_MASK);
        assert_eq!(full.waiters(), 0);
        assert_eq!(full.in_flight(), MAX_WINDOW as u64);
        assert_eq!(State::WAITERS_MASK & State::CLOSED, 0);
        assert_eq!(State::WAITERS_MASK & State::IN_FLIGHT_MASK, 0);
    }

    #[test]
    fn try_acquire_refuses_when_full_and_when_closed() {
        let w = Window::new(2);
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(w.try_acquire(), Err(Refused::Full));
        assert!(!w.release(1), "an open window is never drained");
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(w.close().in_flight(), 2);
        assert_eq!(w.try_acquire(), Err(Refused::Closed));
        assert!(!w.release(1), "one slot is still taken");
        assert!(w.release(1), "the last release drains the closed window");
        assert_eq!(w.max_in_flight(), 2);
    }

    #[test]
    fn blocked_admitter_wakes_on_release() {
        let (w, t) = with_blocked_admitter(1);
        assert!(!w.release(1));
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(w.load().in_flight(), 1);
        assert_eq!(w.load().waiters(), 0);
    }

    #[test]
    fn a_window_that_grows_wakes_its_blocked_admitter_and_one_that_shrinks_refuses() {
        let (w, t) = with_blocked_admitter(1);
        // No release: only the larger window can let the admitter in.
        w.set_cap(2);
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(w.load().in_flight(), 2);
        w.set_cap(1);
        assert_eq!(w.try_acquire(), Err(Refused::Full));
        assert!(!w.release(1));
        assert_eq!(
            w.try_acquire(),
            Err(Refused::Full),
            "one unit in flight still fills a window of one"
        );
        assert!(!w.release(1));
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(w.cap(), 1);
    }

    #[test]
    fn close_wakes_blocked_admitter_with_closed() {
        let (w, t) = with_blocked_admitter(1);
        w.close();
        assert_eq!(t.join().unwrap(), Err(Refused::Closed));
        assert_eq!(w.load().waiters(), 0);
    }
}
