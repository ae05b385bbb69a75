//! The one place the runtime gets its synchronization primitives from.
//!
//! Production builds use `std` atomics and `parking_lot` locks. Under
//! `--cfg fila_loom` the same names resolve to loom's instrumented types, so
//! the loom models in `loom-tests/` explore the real scheduler code rather
//! than a copy. Scheduler files import `Arc`, atomics, `Mutex`, `Condvar`,
//! `UnsafeCell` and thread spawning from here and from nowhere else. (The one
//! thread-local, `ON_WORKER` in `lib.rs`, picks std's or loom's by cfg.)
//!
//! The cfg name is ours (not `loom`) so that dependencies which also have a
//! loom mode do not switch with us.

#[cfg(not(fila_loom))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::Arc;
    pub(crate) use std::thread::JoinHandle;

    /// A mutex whose `lock` cannot fail: a panic while holding it does not
    /// poison it (tasks run outside every runtime lock anyway).
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }

        /// Releases the guard's lock, waits for a notification (or a spurious
        /// wake-up) and re-acquires the lock. Callers loop on their condition.
        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            self.0.wait(guard);
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub(crate) fn spawn<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        std::thread::Builder::new().name(name).spawn(f)
    }

    /// A cell whose contents the caller guarantees are never accessed by
    /// two threads at once. loom's version checks that guarantee; this one
    /// only hands out the pointer.
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a pointer through which it may read and write the
        /// contents; nobody else may access them meanwhile.
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(fila_loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::thread::JoinHandle;
    use std::ops::{Deref, DerefMut};

    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// Holds loom's guard in an `Option` so that `Condvar::wait` can take it
    /// by `&mut`, matching the `parking_lot` signature used in production.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // The runtime never panics while holding a lock, so poisoning is
            // a bug in the runtime itself.
            MutexGuard(Some(self.0.lock().expect("runtime lock poisoned")))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard is present outside wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard is present outside wait")
        }
    }

    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard is present outside wait");
            guard.0 = Some(self.0.wait(inner).expect("runtime lock poisoned"));
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub(crate) fn spawn<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        loom::thread::Builder::new().name(name).spawn(f)
    }

    /// loom's cell: it reports two accesses that are not ordered by
    /// happens-before, the exclusive access the runtime claims.
    pub(crate) use loom::cell::UnsafeCell;
}

pub(crate) use imp::*;
