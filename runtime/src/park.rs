//! A one-token parker per worker. `unpark` of a worker that is not parked
//! is a single atomic swap; only a worker that is really asleep costs a lock
//! and a notification. Built from the `sync` shim, so loom sees every step.
//! See "Parking" in `sleep.md`.

use crate::sync::{AtomicUsize, Condvar, Mutex, Ordering};

/// No token, and the worker is not blocked.
const EMPTY: usize = 0;
/// The worker is blocked (or about to be) on the condvar, under the lock.
const PARKED: usize = 1;
/// A token is waiting for the next `park`.
const NOTIFIED: usize = 2;

/// One worker's parker (public only to the loom models, through
/// `loom_internals`).
pub struct Parker {
    state: AtomicUsize,
    /// Held by the parker from its EMPTY -> PARKED transition until it is
    /// inside `wait`, and taken by an unparker that saw PARKED: so the
    /// notification cannot fall between the two.
    lock: Mutex<()>,
    cvar: Condvar,
}

impl Parker {
    pub fn new() -> Parker {
        Parker {
            state: AtomicUsize::new(EMPTY),
            lock: Mutex::new(()),
            cvar: Condvar::new(),
        }
    }

    /// Blocks until a token is there, then consumes it. A token left by an
    /// earlier `unpark` makes this return at once.
    pub fn park(&self) {
        // Acquire pairs with the release swap in `unpark`: whatever the
        // unparker did before is visible once the token is consumed.
        if self.take_token() {
            return;
        }
        let mut guard = self.lock.lock();
        match self
            .state
            .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            // The token arrived since the fast path; nobody will notify.
            Err(NOTIFIED) => {
                let token = self.take_token();
                debug_assert!(token, "only this worker consumes its token");
                return;
            }
            Err(other) => unreachable!("parker state {other} while not parked"),
        }
        loop {
            self.cvar.wait(&mut guard);
            // PARKED -> NOTIFIED happens only in `unpark`; anything else is
            // a spurious wake-up, and we wait again.
            if self.take_token() {
                return;
            }
        }
    }

    /// Leaves a token and wakes the worker if it is parked.
    pub fn unpark(&self) {
        // Must be a swap, not a store: the value it replaces says whether
        // the worker is blocked and needs the slow path. Release so that a
        // park that takes the token sees what came before this unpark.
        match self.state.swap(NOTIFIED, Ordering::Release) {
            EMPTY | NOTIFIED => {}
            PARKED => self.wake_parked(),
            other => unreachable!("parker state {other}"),
        }
    }

    #[cold]
    fn wake_parked(&self) {
        // The parker set PARKED under the lock and keeps it until it is
        // inside `wait`; once we hold it, the parker is waiting, and the
        // notification reaches it.
        if !crate::broken("unpark-skips-lock") {
            drop(self.lock.lock());
        }
        self.cvar.notify_one();
    }

    /// NOTIFIED -> EMPTY. Returns true if there was a token to consume.
    fn take_token(&self) -> bool {
        self.state
            .compare_exchange(NOTIFIED, EMPTY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(all(test, not(fila_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_token_left_before_park_is_consumed_at_once_and_only_once() {
        let p = Parker::new();
        p.unpark();
        p.unpark();
        p.park();
        assert_eq!(p.state.load(Ordering::Relaxed), EMPTY, "token not consumed");
    }

    #[test]
    fn unpark_wakes_a_parked_worker() {
        let p = Arc::new(Parker::new());
        let q = p.clone();
        let parked = std::thread::spawn(move || q.park());
        while p.state.load(Ordering::Acquire) != PARKED {
            std::thread::sleep(Duration::from_millis(1));
        }
        p.unpark();
        parked.join().unwrap();
        assert_eq!(p.state.load(Ordering::Relaxed), EMPTY);
    }
}
