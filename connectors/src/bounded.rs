//! A blocking call waited for with a bound.
//!
//! Some client calls wait on the broker with no bound of their own: a
//! synchronous offset commit waits for its answer for as long as the group
//! coordinator takes to be found. [`BoundedCall`] makes such calls on a
//! thread of its own, one at a time, and waits for each at most a given
//! time. A call that overruns is left to finish on that thread; until it
//! does, further calls are refused at once rather than queued behind it,
//! so one stuck call costs one thread and never more.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

/// Why a bounded call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("an earlier call is still waiting for its answer")]
    Busy,
    #[error("the call panicked")]
    Panicked,
}

type Call<R> = Box<dyn FnOnce() -> R + Send>;

/// Makes calls returning `R` on a thread named `name`, started at the
/// first call.
pub struct BoundedCall<R> {
    name: &'static str,
    thread: Option<(SyncSender<Call<R>>, Receiver<R>)>,
    /// Whether the last call is still running.
    pending: bool,
}

impl<R: Send + 'static> BoundedCall<R> {
    pub fn new(name: &'static str) -> BoundedCall<R> {
        BoundedCall {
            name,
            thread: None,
            pending: false,
        }
    }

    /// Runs `call` and waits at most `timeout` for what it returns.
    pub fn call(
        &mut self,
        timeout: Duration,
        call: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Unanswered> {
        if self.pending {
            let (_, answers) = self.thread.as_ref().expect("a call is pending");
            match answers.try_recv() {
                // The overrun call's answer comes too late to matter.
                Ok(_) => self.pending = false,
                Err(TryRecvError::Empty) => return Err(Unanswered::Busy),
                Err(TryRecvError::Disconnected) => {
                    self.thread = None;
                    self.pending = false;
                }
            }
        }
        let (calls, answers) = match &self.thread {
            Some(thread) => thread,
            None => self.thread.insert(spawn(self.name).map_err(|e| {
                tracing::warn!("starting thread {}: {e}", self.name);
                Unanswered::Panicked
            })?),
        };
        if calls.send(Box::new(call)).is_err() {
            self.thread = None;
            return Err(Unanswered::Panicked);
        }
        self.pending = true;
        match answers.recv_timeout(timeout) {
            Ok(answer) => {
                self.pending = false;
                Ok(answer)
            }
            Err(RecvTimeoutError::Timeout) => Err(Unanswered::TimedOut(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                // The thread died with the call; the next call starts another.
                self.thread = None;
                self.pending = false;
                Err(Unanswered::Panicked)
            }
        }
    }
}

fn spawn<R: Send + 'static>(
    name: &'static str,
) -> std::io::Result<(SyncSender<Call<R>>, Receiver<R>)> {
    // One call at a time: the caller never sends while one is pending.
    let (calls_tx, calls_rx) = mpsc::sync_channel::<Call<R>>(1);
    let (answers_tx, answers_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for call in calls_rx {
                if answers_tx.send(call()).is_err() {
                    return;
                }
            }
        })?;
    Ok((calls_tx, answers_rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn a_prompt_call_answers() {
        let mut calls = BoundedCall::new("test-call");
        assert_eq!(calls.call(Duration::from_secs(5), || 7), Ok(7));
        assert_eq!(calls.call(Duration::from_secs(5), || 8), Ok(8));
    }

    #[test]
    fn a_stuck_call_is_given_up_after_the_bound_and_blocks_no_later_caller() {
        let mut calls = BoundedCall::new("test-call");
        let (release, released) = mpsc::channel::<()>();
        let started = Instant::now();
        let stuck = calls.call(SHORT, move || {
            let _ = released.recv();
            1
        });
        assert_eq!(stuck, Err(Unanswered::TimedOut(SHORT)));
        let waited = started.elapsed();
        assert!(waited >= SHORT, "gave up after {waited:?}");
        // While it is stuck, calls are refused at once, not queued.
        let started = Instant::now();
        assert_eq!(
            calls.call(Duration::from_secs(60), || 2),
            Err(Unanswered::Busy)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        // Once it finishes, calls go through again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match calls.call(Duration::from_secs(5), || 3) {
                Ok(answer) => {
                    assert_eq!(answer, 3);
                    break;
                }
                Err(Unanswered::Busy) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => panic!("after the release: {other:?}"),
            }
        }
    }

    #[test]
    fn a_panicking_call_is_reported_and_the_next_one_runs() {
        let mut calls = BoundedCall::<u32>::new("test-call");
        assert_eq!(
            calls.call(Duration::from_secs(5), || panic!("in the call")),
            Err(Unanswered::Panicked)
        );
        assert_eq!(calls.call(Duration::from_secs(5), || 4), Ok(4));
    }
}
