//! A one-token parker per worker, built from the `sync` shim so that loom
//! sees every park and unpark.

use crate::sync::{Condvar, Mutex};

pub(crate) struct Parker {
    /// The token. `unpark` sets it, `park` consumes it; an unpark that comes
    /// before the park is therefore never lost.
    notified: Mutex<bool>,
    cvar: Condvar,
}

impl Parker {
    pub(crate) fn new() -> Parker {
        Parker {
            notified: Mutex::new(false),
            cvar: Condvar::new(),
        }
    }

    /// Blocks until the token is set, then consumes it.
    pub(crate) fn park(&self) {
        let mut notified = self.notified.lock();
        while !*notified {
            self.cvar.wait(&mut notified);
        }
        *notified = false;
    }

    /// Sets the token and wakes the parked thread, if any.
    pub(crate) fn unpark(&self) {
        let mut notified = self.notified.lock();
        *notified = true;
        self.cvar.notify_one();
    }
}
