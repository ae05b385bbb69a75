//! The work queues: a Chase-Lev deque per worker and one injector.
//!
//! Production uses `crossbeam-deque`. loom cannot see inside it (its atomics
//! are not loom's), so under `--cfg fila_loom` the same interface is backed by
//! a loom mutex around a `VecDeque`. The substitute keeps the semantics the
//! scheduler relies on: the owner pops the newest task (LIFO), thieves and the
//! injector hand out the oldest (FIFO). The real deque is covered by the
//! stress tests in `runtime/tests/`.

pub(crate) use crossbeam_deque::Steal;

#[cfg(not(fila_loom))]
pub(crate) use crossbeam_deque::{Injector, Stealer, Worker};

#[cfg(fila_loom)]
mod model {
    use super::Steal;
    use crate::sync::{Arc, Mutex};
    use std::collections::VecDeque;

    pub(crate) struct Worker<T>(Arc<Mutex<VecDeque<T>>>);
    pub(crate) struct Stealer<T>(Arc<Mutex<VecDeque<T>>>);
    pub(crate) struct Injector<T>(Mutex<VecDeque<T>>);

    impl<T> Worker<T> {
        pub(crate) fn new_lifo() -> Self {
            Worker(Arc::new(Mutex::new(VecDeque::new())))
        }
        pub(crate) fn push(&self, task: T) {
            self.0.lock().push_back(task);
        }
        pub(crate) fn pop(&self) -> Option<T> {
            self.0.lock().pop_back()
        }
        pub(crate) fn len(&self) -> usize {
            self.0.lock().len()
        }
        pub(crate) fn stealer(&self) -> Stealer<T> {
            Stealer(self.0.clone())
        }
    }

    impl<T> Stealer<T> {
        pub(crate) fn steal(&self) -> Steal<T> {
            self.0
                .lock()
                .pop_front()
                .map_or(Steal::Empty, Steal::Success)
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.0.lock().is_empty()
        }
    }

    impl<T> Injector<T> {
        pub(crate) fn new() -> Self {
            Injector(Mutex::new(VecDeque::new()))
        }
        pub(crate) fn push(&self, task: T) {
            self.0.lock().push_back(task);
        }
        pub(crate) fn steal(&self) -> Steal<T> {
            self.0
                .lock()
                .pop_front()
                .map_or(Steal::Empty, Steal::Success)
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.0.lock().is_empty()
        }
    }
}

#[cfg(fila_loom)]
pub(crate) use model::{Injector, Stealer, Worker};
