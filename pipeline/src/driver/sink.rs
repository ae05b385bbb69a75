//! The sink thread: writes results, flushes, acknowledges; and the reorder
//! buffer of `--ordered`.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fila_connectors::{
    Ack, Acks, ConnectorError, Position, ReplayBound, Sink, SourceStatus, TransactionError,
    Transactions, Uncommitted,
};

use super::{DriverConfig, DriverError, RunSummary, SMALL_BATCH_BYTES};
use crate::counters::Counters;
use crate::outlet::{Combiner, Event};
use crate::report::latency_histogram;
use crate::state::KeyMap;

/// How the sink thread acknowledges finished records.
pub(super) enum Acking<'a> {
    /// A source that does not commit: nothing to acknowledge.
    None,
    /// At-least-once: after each flush, in the source's tracker; the commit
    /// thread is told how many, and commits by time.
    AfterFlush { acks: &'a Acks, acked: Sender<u64> },
    /// Exactly-once: as each record's results are sent into the open
    /// transaction, which this thread commits by time (or aborts).
    InTransactions(Transactional<'a>),
}

/// The sink thread's side of exactly-once.
pub(super) struct Transactional<'a> {
    pub(super) acks: &'a Acks,
    pub(super) clock: Clock,
    /// The epoch records are admitted in. An abort starts the next one and
    /// publishes it here; the admitting thread then rewinds the source.
    pub(super) epoch: &'a AtomicU64,
    /// The epoch the admitting thread has rewound the source for. Until it
    /// equals `epoch`, the tracker still counts records of the aborted
    /// transaction as done, and nothing may be committed.
    pub(super) rewound: &'a AtomicU64,
    /// The transactional call under way, for the admitting thread.
    pub(super) in_call: &'a InCall,
    /// How far behind its input the source reads, for the clock.
    pub(super) source: Option<Arc<SourceStatus>>,
}

/// When to commit: every `interval`, or longer while the job runs behind
/// its input (below); at once when `urgent` (half the replay bound) is
/// reached; and at once when the input has gone quiet.
///
/// Behind: when the input holds records that the source, at the rate it
/// has been handing them out, will take a while to reach
/// ([`SourceStatus::behind`]), their results are late by that much
/// whatever the commits do. So the transaction may stay open an eighth of
/// that while ([`BEHIND_SHARE`]), up to [`MAX_STRETCH`]: the broker, busiest
/// when a backlog is read, serves fewer transactions (each costs it markers
/// on every partition written and its coordinator's log), and a result
/// waits for its commit at most that much longer. The sign is the input's
/// unread records against the read rate, not the records' timestamps
/// (which may be event time) nor a full window (which a starved admitting
/// thread does not see): a job that keeps up has next to nothing unread
/// and commits every `interval`. The source refreshes it on its polls, at
/// most every 250 ms; a burst's end is still committed at once, by the
/// quiet rule below.
///
/// Quiet means that no record was read since the sink thread last looked,
/// at least a tick before (it looks once a batch or a tick), and that
/// every record read has finished. Results are visible to read-committed
/// readers only once their transaction commits, so without it the end of
/// a burst, or a lone record, would wait out the rest of the interval for
/// nothing: no more results are coming to share the transaction. While
/// records keep coming it never fires. It costs at most one commit per
/// tick, on input whose records come more than a tick apart; records that
/// come closer together are committed by the interval alone.
pub(super) struct Clock {
    pub(super) interval: Duration,
    pub(super) urgent: ReplayBound,
    pub(super) last: Instant,
    /// Records read when the sink thread last looked.
    read: u64,
}

/// The share of how far behind its input the job reads that a
/// transaction may stay open past its interval: one part in this many.
const BEHIND_SHARE: u32 = 8;

/// The longest a transaction stays open for being behind: a longer one
/// would save the broker little more, and an abort would run more again.
const MAX_STRETCH: Duration = Duration::from_secs(1);

impl Clock {
    pub(super) fn new(interval: Duration, bound: ReplayBound) -> Clock {
        Clock {
            interval,
            urgent: bound.scaled(1, 2),
            last: Instant::now(),
            read: 0,
        }
    }

    /// Whether to commit now; `read` is the count of records read so far,
    /// `all_done` whether every one of them has finished, and `behind` how
    /// long reading the input's unread records will take.
    pub(super) fn due(&mut self, acks: &Acks, read: u64, all_done: bool, behind: Duration) -> bool {
        let quiet = read == self.read && all_done;
        self.read = read;
        let held = acks.uncommitted();
        (quiet && held.records > 0)
            || self.last.elapsed() >= self.interval(behind)
            || !self.urgent.admits(held)
    }

    /// How long a transaction stays open when reading the input's unread
    /// records will take `behind`.
    fn interval(&self, behind: Duration) -> Duration {
        self.interval.max((behind / BEHIND_SHARE).min(MAX_STRETCH))
    }
}

/// The sink thread: writes results in batches a tick apart or more, flushes each
/// batch, and only then acknowledges the records it finished; under
/// exactly-once, commits the batches' transaction by time instead.
pub(super) fn run(
    rx: Receiver<Event>,
    sink: Box<dyn Sink>,
    acking: Acking<'_>,
    counters: &Counters,
    read: &AtomicU64,
    config: &DriverConfig,
) -> Result<RunSummary, DriverError> {
    let tracked = !matches!(acking, Acking::None);
    let mut out = Writer::new(sink, counters, tracked, config);
    match acking {
        Acking::InTransactions(txn) => run_transactions(rx, &mut out, txn, counters, read, config)?,
        acking => {
            let mut reorder = config.orders().then(Reorder::default);
            let mut batch = Vec::new();
            let mut gather = Gather::new(config, read, Spacing::Between);
            while let Ok(first) = rx.recv() {
                gather.batch(&rx, first, &mut batch);
                for event in batch.drain(..) {
                    match reorder.as_mut() {
                        Some(reorder) => reorder.push(event, &mut out)?,
                        None => out.write(event)?,
                    }
                }
                out.end_batch()?;
                // Acknowledge only what the destination has confirmed.
                out.sink.flush().map_err(DriverError::Sink)?;
                if let Acking::AfterFlush { acks, acked } = &acking {
                    let done = acknowledge(acks, out.finished.drain(..));
                    if done > 0 {
                        // Fails only once the commit thread stopped on an
                        // error, which the driver reports.
                        let _ = acked.send(done);
                    }
                }
            }
        }
    }
    let mut summary = out.summary;
    summary.messages = counters.messages.load(Ordering::Relaxed);
    summary.outputs = counters.outputs.load(Ordering::Relaxed);
    summary.dead_letters = counters.dead_letters.load(Ordering::Relaxed);
    summary.panicked = counters.panicked.load(Ordering::Relaxed);
    Ok(summary)
}

/// Exactly-once: each partition's results are sent in offset order (the
/// reorder buffer), and a record is acknowledged as soon as its results
/// are sent, so the offsets a commit carries cover exactly the results in
/// its transaction. Commits run on this thread, between batches, so no
/// result is sent while one is under way. The thread wakes every tick even
/// with nothing to write, to commit on time and to serve a rebalance's
/// request to abort.
fn run_transactions(
    rx: Receiver<Event>,
    out: &mut Writer<'_>,
    mut txn: Transactional<'_>,
    counters: &Counters,
    read: &AtomicU64,
    config: &DriverConfig,
) -> Result<(), DriverError> {
    let tick = config.sink_tick.max(Duration::from_millis(1));
    // Acquire: pairs with this thread's own stores only; the admitting
    // thread reads it.
    let mut epoch = txn.epoch.load(Ordering::Acquire);
    let mut reorder = Reorder::default();
    let mut batch = Vec::new();
    let mut gather = Gather::new(config, read, Spacing::AfterFirst);
    let mut watch = Watch::new(Instant::now());
    let mut open = true;
    while open {
        match rx.recv_timeout(tick) {
            Ok(first) => gather.batch(&rx, first, &mut batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        abort_if_asked(out, &mut txn, &mut epoch, &mut reorder, counters)?;
        for event in batch.drain(..) {
            // Results of records admitted before the last abort: the source
            // reads those records again.
            if event.epoch() < epoch {
                continue;
            }
            reorder.push(event, out)?;
        }
        out.end_batch()?;
        acknowledge(txn.acks, out.finished.drain(..));
        // Acquire: pairs with the admitting thread's store after its
        // rewind, which reset the tracker.
        let rewound = txn.rewound.load(Ordering::Acquire);
        let read_so_far = read.load(Ordering::Relaxed);
        let behind = txn.source.as_ref().map_or(Duration::ZERO, |s| s.behind());
        let due = txn
            .clock
            .due(txn.acks, read_so_far, gather.nothing_in_flight(), behind);
        // A revocation may have asked for the abort after the check above,
        // and what this batch wrote may belong to the partitions it took
        // away: their offsets are no longer committed here (a revocation
        // that gave up waiting has forgotten them), and their new owner
        // reads them again. So the abort comes first.
        if rewound == epoch
            && (!open || due)
            && !abort_if_asked(out, &mut txn, &mut epoch, &mut reorder, counters)?
        {
            let started = Instant::now();
            let acks = txn.acks;
            txn.in_call.enter("committing the transaction");
            let committed = transactions(out)?.commit(acks);
            txn.in_call.leave();
            match committed {
                // An empty transaction never reached the broker.
                Ok(true) => counters.committed(started.elapsed()),
                Ok(false) => {}
                Err(TransactionError::Abort(reason)) => {
                    abort(out, &mut txn, &mut epoch, &mut reorder, counters, &reason)?;
                    watch.progressed(Instant::now());
                }
                Err(TransactionError::Fatal(e)) => return Err(DriverError::Commit(e)),
            }
            txn.clock.last = Instant::now();
        }
        let held = txn.acks.uncommitted();
        if let Some(waited) = watch.check(held, Instant::now()) {
            tracing::warn!(
                "no transaction has committed for {}s: {} records read and not committed \
                 ({} awaiting their results, {} held for offset order; transaction epoch \
                 {epoch}, source rewound for epoch {rewound})",
                waited.as_secs(),
                held.records,
                txn.acks.outstanding(),
                reorder.held(),
            );
        }
    }
    Ok(())
}

/// How long an exactly-once run may hold uncommitted records without
/// committing any before it says so, and how often it says so again; and
/// how long a transactional call may last before the admitting thread
/// says so.
pub(super) const STUCK_WARNING: Duration = Duration::from_secs(30);

/// The transactional call the sink thread is in, if any, and since when.
/// A call that does not return stops the sink thread's own watch, so the
/// admitting thread, which waits on the replay bound meanwhile, reads
/// this and says what the sink thread is waiting for.
#[derive(Default)]
pub(super) struct InCall(Mutex<Option<(&'static str, Instant)>>);

impl InCall {
    fn enter(&self, call: &'static str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((call, Instant::now()));
    }

    fn leave(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The call under way, and how long it has lasted `at` a time.
    pub(super) fn current(&self, at: Instant) -> Option<(&'static str, Duration)> {
        let call = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        call.map(|(what, since)| (what, at.saturating_duration_since(since)))
    }
}

/// Watches an exactly-once run for records read that no commit covers
/// for long, and says how much is held and where, whatever the cause: a
/// broker fault logs its own warnings too, but a wait with no fault
/// would otherwise pass without a word.
struct Watch {
    /// When the uncommitted records last fell, or an abort gave them up.
    progress: Instant,
    last: Uncommitted,
    warned: Option<Instant>,
}

impl Watch {
    fn new(at: Instant) -> Watch {
        Watch {
            progress: at,
            last: Uncommitted::default(),
            warned: None,
        }
    }

    fn progressed(&mut self, at: Instant) {
        self.progress = at;
        self.warned = None;
    }

    /// Takes in what is uncommitted `at` a time; returns how long nothing
    /// was committed when that is worth a warning: [`STUCK_WARNING`]
    /// after the last progress, and as long again after each warning.
    fn check(&mut self, held: Uncommitted, at: Instant) -> Option<Duration> {
        let fell = held.records < self.last.records;
        self.last = held;
        if held.records == 0 || fell {
            self.progressed(at);
            return None;
        }
        let since = self.warned.unwrap_or(self.progress);
        if at.saturating_duration_since(since) < STUCK_WARNING {
            return None;
        }
        self.warned = Some(at);
        Some(at.saturating_duration_since(self.progress))
    }
}

/// Gathers batches for the sink thread, and counts the records it has
/// seen finish.
struct Gather<'a> {
    config: &'a DriverConfig,
    /// Records this segment's source has read.
    read: &'a AtomicU64,
    /// `Done` events received: one per record read.
    done: u64,
    /// How the tick spaces batches.
    spacing: Spacing,
    /// When the last batch was handed out.
    last: Option<Instant>,
}

/// How [`Gather`] spaces batches with the sink's tick.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spacing {
    /// A tick between two batches at the least: a result within a tick of
    /// the last batch waits out that tick, a later one does not (then the
    /// small-batch linger applies). Each batch is flushed, and a lone
    /// record's flush is its latency.
    Between,
    /// A tick after each batch's first result: exactly-once, where results
    /// become visible at the commit, not the flush, and the commit on
    /// quiet input (`Clock`) counts on a batch taking a tick, so that input
    /// a little more than a tick apart does not commit once a record.
    AfterFirst,
}

impl<'a> Gather<'a> {
    fn new(config: &'a DriverConfig, read: &'a AtomicU64, spacing: Spacing) -> Gather<'a> {
        Gather {
            config,
            read,
            done: 0,
            spacing,
            last: None,
        }
    }

    /// Gathers a batch after its first event, spaced by the tick as
    /// [`Spacing`] says. Then, while the batch is still under
    /// [`SMALL_BATCH_BYTES`] and records are in flight, it gathers what
    /// arrives in further ticks, until it reaches that size, nothing is in
    /// flight, or its first event has waited the linger. So the broker
    /// gets a request per tick at most; with [`Spacing::Between`] a stream
    /// that keeps the sink busy for longer than a tick has its next batch
    /// written as soon as the last is flushed, with what gathered
    /// meanwhile; a slow stream goes in fewer, fuller requests; and a lone
    /// record, or the last results of a burst, do not wait out the linger
    /// for results that are not coming (the last results of a burst wait
    /// up to a step). Stops early when the channel closed: the run is
    /// ending.
    fn batch(&mut self, rx: &Receiver<Event>, first: Event, batch: &mut Vec<Event>) {
        let started = Instant::now();
        let mut bytes = 0;
        self.take(first, batch, &mut bytes);
        let tick = self.config.sink_tick;
        let wait = match self.spacing {
            Spacing::AfterFirst => Some(tick),
            Spacing::Between => self
                .last
                .and_then(|last| last.checked_add(tick))
                .and_then(|due| due.checked_duration_since(started)),
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            std::thread::sleep(wait);
        }
        let linger = self.config.sink_linger();
        let step = tick.max(Duration::from_millis(1));
        // A record's `Done` comes just behind its outputs, and the thread
        // may wake between the two. So, with `Between` and one record in
        // flight, for one step it wakes for each event, and a lone record's
        // batch goes as soon as its `Done` is in; otherwise, and after
        // that, it wakes once a step.
        let eager_until = match self.spacing {
            Spacing::Between => Instant::now().checked_add(step),
            Spacing::AfterFirst => None,
        };
        let mut closed = false;
        loop {
            while !closed {
                match rx.try_recv() {
                    Ok(event) => self.take(event, batch, &mut bytes),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => closed = true,
                }
            }
            let waited = started.elapsed();
            if closed || bytes >= SMALL_BATCH_BYTES || waited >= linger || self.nothing_in_flight()
            {
                self.last = Some(Instant::now());
                return;
            }
            let left = linger - waited;
            let eager = eager_until
                .filter(|_| self.in_flight() == 1)
                .and_then(|until| until.checked_duration_since(Instant::now()));
            match eager {
                Some(eager) if !eager.is_zero() => match rx.recv_timeout(eager.min(left)) {
                    Ok(event) => self.take(event, batch, &mut bytes),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                },
                _ => std::thread::sleep(step.min(left)),
            }
        }
    }

    fn take(&mut self, event: Event, batch: &mut Vec<Event>, bytes: &mut usize) {
        *bytes += event.bytes();
        if let Event::Done { .. } = event {
            self.done += 1;
        }
        batch.push(event);
    }

    /// Whether every record read so far has finished: its `Done` is in
    /// hand. The count of records read is stored before a record is
    /// submitted, so this never holds while one is still running; a record
    /// read just after only makes this batch go early.
    fn nothing_in_flight(&self) -> bool {
        self.in_flight() == 0
    }

    /// Records read that have not finished: their `Done` is not in hand.
    fn in_flight(&self) -> u64 {
        self.read.load(Ordering::Relaxed).saturating_sub(self.done)
    }
}

fn transactions<'w>(out: &'w mut Writer<'_>) -> Result<&'w mut dyn Transactions, DriverError> {
    out.sink.transactions().ok_or_else(|| {
        DriverError::Commit(ConnectorError::Config {
            message: "the sink stopped writing in transactions".into(),
        })
    })
}

/// Aborts the open transaction if a rebalance asked for it; returns
/// whether it did.
fn abort_if_asked(
    out: &mut Writer<'_>,
    txn: &mut Transactional<'_>,
    epoch: &mut u64,
    reorder: &mut Reorder,
    counters: &Counters,
) -> Result<bool, DriverError> {
    if !transactions(out)?.abort_requested() {
        return Ok(false);
    }
    abort(out, txn, epoch, reorder, counters, "a rebalance")?;
    Ok(true)
}

/// Aborts the open transaction: what it held is dropped, results of
/// records admitted so far are dropped as they come, and the admitting
/// thread rewinds the source to the last commit before it reads on.
fn abort(
    out: &mut Writer<'_>,
    txn: &mut Transactional<'_>,
    epoch: &mut u64,
    reorder: &mut Reorder,
    counters: &Counters,
    reason: &str,
) -> Result<(), DriverError> {
    txn.in_call.enter("aborting the transaction");
    let aborted = transactions(out)?.abort();
    txn.in_call.leave();
    aborted.map_err(DriverError::Commit)?;
    *epoch += 1;
    // Release: the admitting thread's rewind follows this abort.
    txn.epoch.store(*epoch, Ordering::Release);
    *reorder = Reorder::default();
    out.finished.clear();
    out.changelog.clear();
    // Aborts come between batches, after `end_batch` wrote what a batch
    // held.
    debug_assert!(!matches!(&out.latest, Some(l) if !l.outputs.is_empty()));
    debug_assert!(out.combined.is_empty());
    out.combined.clear();
    counters.aborted();
    tracing::warn!("transaction aborted ({reason}); reading again from the last commit");
    Ok(())
}

/// Acknowledges `finished` in `acks`; returns how many were done.
fn acknowledge(acks: &Acks, finished: impl Iterator<Item = Position>) -> u64 {
    let mut done = 0;
    acks.ack_each(finished, |position, ack| match ack {
        Ack::Done => done += 1,
        // Its partition moved to another member while it ran.
        Ack::Released => {}
        Ack::Unknown => {
            tracing::error!(?position, "a record finished twice or was never tracked")
        }
    });
    done
}

/// The sink side of the sink thread: writes results, and collects the
/// positions of finished records for acknowledgement after a flush.
struct Writer<'a> {
    sink: Box<dyn Sink>,
    counters: &'a Counters,
    /// Whether finished records are acknowledged (a committing source).
    tracked: bool,
    finished: Vec<Position>,
    summary: RunSummary,
    /// The changelog records of the batch being written, by topic,
    /// partition and key. A changelog is compacted and read back in
    /// order, so of a key's updates within one batch only the last needs
    /// writing: a key updated a thousand times in a batch costs the
    /// broker one record, not a thousand. Written at the end of each
    /// batch ([`Writer::end_batch`]), before anything of the batch
    /// is acknowledged or committed, so a commit still covers every
    /// update it acknowledges.
    changelog: KeyMap<ChangelogKey, Option<Vec<u8>>>,
    /// With `latest_per_key`: the batch's outputs, held until its end.
    latest: Option<Latest>,
    /// The records of the batch bound for combining repartitions
    /// (`reduce_combined`), by topic and key, each with the later ones of
    /// its key folded in. Written at the end of each batch, with the
    /// changelog records and for the same reason (a pair that does not
    /// combine, at once).
    combined: KeyMap<(Arc<str>, Vec<u8>), Combining>,
}

/// A record of a combining repartition, held for the end of the batch.
struct Combining {
    value: Box<dyn Any + Send>,
    combiner: Arc<dyn Combiner>,
}

/// The outputs of a batch under `latest_per_key`, in the order they came,
/// each keyed one's slot emptied when a later output of its key comes: at
/// the batch's end the rest are written in that order, so what a reader
/// sees is the batch's outputs with the superseded ones taken out.
#[derive(Default)]
struct Latest {
    outputs: Vec<Option<Event>>,
    /// Where each key's last output is in `outputs`.
    at: KeyMap<Arc<[u8]>, usize>,
}

/// A changelog record's topic, partition and key.
type ChangelogKey = (Arc<str>, i32, Vec<u8>);

impl<'a> Writer<'a> {
    fn new(
        sink: Box<dyn Sink>,
        counters: &'a Counters,
        tracked: bool,
        config: &DriverConfig,
    ) -> Writer<'a> {
        Writer {
            sink,
            counters,
            tracked,
            finished: Vec::new(),
            summary: RunSummary {
                messages: 0,
                outputs: 0,
                dead_letters: 0,
                panicked: 0,
                first_arrival: None,
                last_done: None,
                latencies_us: latency_histogram(),
            },
            changelog: KeyMap::default(),
            latest: config.latest_per_key.then(Latest::default),
            combined: KeyMap::default(),
        }
    }

    /// Ends a batch: writes the outputs held under `latest_per_key`, the
    /// changelog records, each key's last, and the combined repartition
    /// records.
    fn end_batch(&mut self) -> Result<(), DriverError> {
        for ((topic, key), held) in self.combined.drain() {
            write_combined(&mut *self.sink, &topic, &key, held)?;
        }
        if let Some(latest) = &mut self.latest {
            latest.at.clear();
            for event in latest.outputs.drain(..).flatten() {
                write_output(&mut *self.sink, self.counters, &mut self.summary, event)?;
            }
        }
        for ((topic, partition, key), value) in self.changelog.drain() {
            self.sink
                .send_to(&topic, Some(partition), &key, value.as_deref())
                .map_err(DriverError::Sink)?;
        }
        Ok(())
    }

    /// Writes an output, or under `latest_per_key` holds it until the end
    /// of the batch, in place of the one before it of its key.
    fn output(&mut self, event: Event) -> Result<(), DriverError> {
        let Some(latest) = &mut self.latest else {
            return write_output(&mut *self.sink, self.counters, &mut self.summary, event);
        };
        if let Event::Output {
            key: Some(key),
            own_key: true,
            ..
        } = &event
        {
            let key = Arc::clone(key);
            if let Some(before) = latest.at.insert(key, latest.outputs.len()) {
                latest.outputs[before] = None;
                self.counters.superseded.fetch_add(1, Ordering::Relaxed);
            }
        }
        latest.outputs.push(Some(event));
        Ok(())
    }

    /// Holds a record of a combining repartition, folded into the one
    /// held for its key if there is one. When the two do not combine,
    /// both are written now, in order, and nothing is held for the key:
    /// a record the keyed stage then fails on carries no later record's
    /// contribution with it.
    fn combine(
        &mut self,
        topic: Arc<str>,
        key: Vec<u8>,
        value: Box<dyn Any + Send>,
        combiner: Arc<dyn Combiner>,
    ) -> Result<(), DriverError> {
        use std::collections::hash_map::Entry;
        match self.combined.entry((topic, key)) {
            Entry::Vacant(slot) => {
                slot.insert(Combining { value, combiner });
            }
            Entry::Occupied(mut slot) => {
                let held = slot.get_mut();
                match held.combiner.combine(&mut held.value, value) {
                    Ok(()) => {
                        self.counters.combined.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(value) => {
                        let ((topic, key), earlier) = slot.remove_entry();
                        write_combined(&mut *self.sink, &topic, &key, earlier)?;
                        let later = Combining { value, combiner };
                        write_combined(&mut *self.sink, &topic, &key, later)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, event: Event) -> Result<(), DriverError> {
        if matches!(event, Event::Output { .. }) {
            return self.output(event);
        }
        if let Event::Combined {
            topic,
            key,
            value,
            combiner,
            ..
        } = event
        {
            return self.combine(topic, key, value, combiner);
        }
        let (sink, counters, summary) = (&mut *self.sink, self.counters, &mut self.summary);
        match event {
            // Outputs and records to combine went their ways above.
            Event::Admitted { .. } | Event::Output { .. } | Event::Combined { .. } => {}
            Event::Rejected {
                position: Some(position),
                key,
                payload,
                reason,
                at,
                ..
            } => {
                dead_letter(sink, position, key.as_deref(), &payload, &reason, counters)?;
                summary.last_done = summary.last_done.max(Some(at));
            }
            Event::Internal {
                topic,
                partition: Some(partition),
                compacted: true,
                key,
                value,
                ..
            } => {
                self.changelog.insert((topic, partition, key), value);
            }
            Event::Internal {
                topic,
                partition,
                key,
                value,
                ..
            } => sink
                .send_to(&topic, partition, &key, value.as_deref())
                .map_err(DriverError::Sink)?,
            Event::Rejected {
                position: None,
                reason,
                ..
            } => {
                // A result of no record (a window closed at the end of
                // the input) failed: there is no input to dead-letter.
                counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason, "a result at the end of the input was dropped");
            }
            Event::Done {
                position, panic, ..
            } => {
                if let Some(p) = panic {
                    let reason = format!("a stage panicked: {}", p.message);
                    let key = p.key.as_deref();
                    dead_letter(sink, position, key, &p.payload, &reason, counters)?;
                    counters.panicked.fetch_add(1, Ordering::Relaxed);
                    summary.last_done = summary.last_done.max(Some(Instant::now()));
                }
                counters.messages.fetch_add(1, Ordering::Relaxed);
                if self.tracked {
                    self.finished.push(position);
                }
            }
        }
        Ok(())
    }
}

/// Writes a record of a combining repartition to its topic, under its
/// key. One that does not serialize is a bug of the job: the run stops,
/// and nothing of the batch is acknowledged.
fn write_combined(
    sink: &mut dyn Sink,
    topic: &str,
    key: &[u8],
    held: Combining,
) -> Result<(), DriverError> {
    let value = held.combiner.encode(&*held.value).map_err(|e| {
        DriverError::Sink(ConnectorError::Config {
            message: format!("a record for the repartition topic {topic}: {e}"),
        })
    })?;
    sink.send_to(topic, None, key, Some(&value))
        .map_err(DriverError::Sink)
}

/// Writes an output and counts it.
fn write_output(
    sink: &mut dyn Sink,
    counters: &Counters,
    summary: &mut RunSummary,
    event: Event,
) -> Result<(), DriverError> {
    let Event::Output {
        key,
        payload,
        arrived,
        done,
        ..
    } = event
    else {
        unreachable!("only outputs are written as outputs");
    };
    sink.send(key.as_deref(), &payload)
        .map_err(DriverError::Sink)?;
    counters.outputs.fetch_add(1, Ordering::Relaxed);
    counters
        .output_bytes
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    let latency = done.saturating_duration_since(arrived);
    summary
        .latencies_us
        .saturating_record(latency.as_micros() as u64);
    counters.record_latency(latency);
    summary.last_done = summary.last_done.max(Some(done));
    Ok(())
}

/// The reorder buffer of `ordered`: per partition, the records admitted
/// and not yet written, in admission order, each with its results so far.
/// The front record's results are written once it is done, then the next.
#[derive(Default)]
struct Reorder {
    partitions: HashMap<i32, VecDeque<Held>>,
    /// Per partition read again after a rebalance while records of its
    /// earlier run were still held (a record admitted at or below the last
    /// one queued): how many entries at the front of its queue belong to
    /// earlier runs. Those are searched one by one; the rest are in
    /// offset order.
    earlier: HashMap<i32, usize>,
}

struct Held {
    offset: i64,
    events: Vec<Event>,
    done: bool,
}

impl Reorder {
    /// Records admitted and not yet written.
    fn held(&self) -> usize {
        self.partitions.values().map(VecDeque::len).sum()
    }

    fn push(&mut self, event: Event, out: &mut Writer<'_>) -> Result<(), DriverError> {
        let position = match &event {
            Event::Admitted { position: p, .. } => {
                let held = Held {
                    offset: p.offset,
                    events: Vec::new(),
                    done: false,
                };
                let queue = self.partitions.entry(p.partition).or_default();
                if queue.back().is_some_and(|b| b.offset >= p.offset) {
                    self.earlier.insert(p.partition, queue.len());
                }
                queue.push_back(held);
                return Ok(());
            }
            Event::Output { position, .. }
            | Event::Rejected { position, .. }
            | Event::Internal { position, .. }
            | Event::Combined { position, .. } => *position,
            Event::Done { position, .. } => Some(*position),
        };
        let Some(position) = position else {
            // A result of no record has no place in any order.
            return out.write(event);
        };
        let queue = self.partitions.entry(position.partition).or_default();
        // Admission order is offset order within a partition's run. A
        // partition read again while records of its earlier run were held
        // holds one offset twice, and the earlier of them not yet done is
        // this one.
        let earlier = self.earlier.get(&position.partition).copied();
        let ahead = earlier.unwrap_or(0);
        let is = |h: &Held| h.offset == position.offset && !h.done;
        let found = queue.range(..ahead).position(is).or_else(|| {
            // Bisection over the current run: in offset order, each offset
            // once.
            let (mut lo, mut hi) = (ahead, queue.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if queue[mid].offset < position.offset {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            queue.get(lo).is_some_and(is).then_some(lo)
        });
        let Some(held) = found.map(|i| &mut queue[i]) else {
            // Not admitted through this buffer: nothing to wait for.
            return out.write(event);
        };
        let done = matches!(event, Event::Done { .. });
        held.events.push(event);
        held.done = done;
        let mut released = None;
        let mut popped = 0;
        while queue.front().is_some_and(|h| h.done) {
            let held = queue.pop_front().expect("the front is there");
            popped += 1;
            // An output's latency includes its wait in the buffer.
            let now = *released.get_or_insert_with(Instant::now);
            for mut event in held.events {
                if let Event::Output { done, .. } = &mut event {
                    *done = (*done).max(now);
                }
                out.write(event)?;
            }
        }
        if let Some(ahead) = earlier {
            if ahead <= popped {
                self.earlier.remove(&position.partition);
            } else {
                self.earlier.insert(position.partition, ahead - popped);
            }
        }
        Ok(())
    }
}

fn dead_letter(
    sink: &mut dyn Sink,
    position: Position,
    key: Option<&[u8]>,
    payload: &[u8],
    reason: &str,
    counters: &Counters,
) -> Result<(), DriverError> {
    counters.dead_letters.fetch_add(1, Ordering::Relaxed);
    if sink.has_dead_letter_destination() {
        sink.dead_letter(position, key, payload, reason)
            .map_err(DriverError::Sink)
    } else {
        tracing::warn!(
            partition = position.partition,
            offset = position.offset,
            reason,
            "bad record skipped (no dead-letter destination)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn in_call_says_which_call_is_under_way_and_for_how_long() {
        let in_call = InCall::default();
        let before = Instant::now();
        assert_eq!(in_call.current(before), None);
        in_call.enter("committing the transaction");
        let later = before + Duration::from_secs(31);
        let (call, lasted) = in_call.current(later).unwrap();
        assert_eq!(call, "committing the transaction");
        assert!(lasted >= Duration::from_secs(31) - Duration::from_millis(100));
        assert!(lasted <= Duration::from_secs(31));
        in_call.leave();
        assert_eq!(in_call.current(later), None);
    }

    #[test]
    fn a_transaction_commits_early_only_once_the_input_has_gone_quiet() {
        let acks = Acks::new();
        let bound = ReplayBound {
            records: 1_000,
            bytes: 1 << 20,
        };
        // An interval no test outlives: only quiet can make it due.
        let mut clock = Clock::new(Duration::from_secs(3600), bound);
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        assert!(
            !clock.due(&acks, 0, true, Duration::ZERO),
            "nothing read, nothing held"
        );
        assert!(
            !clock.due(&acks, 0, true, Duration::ZERO),
            "quiet, but nothing to commit"
        );
        acks.track(at(0), 10);
        assert!(
            !clock.due(&acks, 1, false, Duration::ZERO),
            "a record was just read"
        );
        assert!(
            !clock.due(&acks, 1, false, Duration::ZERO),
            "no read since, but it runs"
        );
        assert!(
            clock.due(&acks, 1, true, Duration::ZERO),
            "no read since, and it finished"
        );
        acks.track(at(1), 10);
        assert!(
            !clock.due(&acks, 2, true, Duration::ZERO),
            "another read since the last look"
        );
        assert!(clock.due(&acks, 2, true, Duration::ZERO));
        // Past half the bound, due whatever is read.
        for offset in 2..501 {
            acks.track(at(offset), 10);
        }
        assert!(
            clock.due(&acks, 501, false, Duration::ZERO),
            "half the bound is held"
        );
    }

    #[test]
    fn a_transaction_stays_open_longer_while_the_job_runs_behind() {
        let acks = Acks::new();
        let bound = ReplayBound {
            records: 1_000,
            bytes: 1 << 20,
        };
        let mut clock = Clock::new(Duration::from_millis(100), bound);
        acks.track(
            Position {
                partition: 0,
                offset: 0,
            },
            10,
        );
        let since = |ms| Instant::now() - Duration::from_millis(ms);
        // Records keep coming (never quiet): only time can make it due.
        let read = std::cell::Cell::new(0);
        let due = |clock: &mut Clock, behind: Duration| {
            read.set(read.get() + 1);
            clock.due(&acks, read.get(), false, behind)
        };
        let secs = Duration::from_secs;
        clock.last = since(150);
        assert!(due(&mut clock, Duration::ZERO), "keeping up: the interval");
        assert!(
            due(&mut clock, Duration::from_millis(800)),
            "an eighth of 800 ms is no more than the interval"
        );
        assert!(!due(&mut clock, secs(4)), "4 s behind: open for 500 ms");
        clock.last = since(520);
        assert!(due(&mut clock, secs(4)));
        clock.last = since(600);
        assert!(!due(&mut clock, secs(3600)), "far behind: up to a second");
        clock.last = since(1_010);
        assert!(due(&mut clock, secs(3600)));
        // A stall reads as behind without end: a second too.
        clock.last = since(600);
        assert!(!due(&mut clock, Duration::MAX));
        clock.last = since(1_010);
        assert!(due(&mut clock, Duration::MAX));
        // Behind, a quiet input still commits at once.
        clock.last = Instant::now();
        assert!(!due(&mut clock, secs(4)));
        assert!(clock.due(&acks, read.get(), true, secs(4)), "quiet");
        // A longer interval of its own stays as it is.
        let mut slow = Clock::new(secs(2), bound);
        slow.last = since(1_500);
        assert!(!due(&mut slow, secs(3600)));
        slow.last = since(2_010);
        assert!(due(&mut slow, secs(3600)));
    }

    #[test]
    fn the_watch_warns_after_records_sat_uncommitted_and_again_while_they_sit() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let held = |records| Uncommitted { records, bytes: 0 };
        let mut watch = Watch::new(t0);
        // Records come and go with commits: never a warning.
        assert_eq!(watch.check(held(10), at(10)), None);
        assert_eq!(watch.check(held(4), at(35)), None, "fell: progress");
        assert_eq!(watch.check(held(0), at(60)), None);
        assert_eq!(watch.check(held(0), at(200)), None, "nothing held");
        // Held, and more read, with no commit: a warning 30 s after the
        // last progress, then every 30 s.
        assert_eq!(watch.check(held(5), at(210)), None);
        assert_eq!(watch.check(held(9), at(229)), None);
        assert_eq!(watch.check(held(9), at(230)), Some(Duration::from_secs(30)));
        assert_eq!(watch.check(held(9), at(250)), None);
        assert_eq!(watch.check(held(9), at(260)), Some(Duration::from_secs(60)));
        // A commit ends it; an abort too.
        assert_eq!(watch.check(held(3), at(270)), None);
        assert_eq!(watch.check(held(3), at(299)), None);
        watch.progressed(at(299));
        assert_eq!(watch.check(held(3), at(320)), None);
        assert_eq!(watch.check(held(3), at(329)), Some(Duration::from_secs(30)));
    }

    fn output(bytes: usize) -> Event {
        Event::Output {
            epoch: 0,
            position: None,
            key: None,
            own_key: false,
            payload: vec![b'x'; bytes],
            arrived: Instant::now(),
            done: Instant::now(),
        }
    }

    fn config(linger: Duration) -> DriverConfig {
        ticked(Duration::from_millis(1), linger)
    }

    fn ticked(tick: Duration, linger: Duration) -> DriverConfig {
        DriverConfig {
            sink_tick: tick,
            sink_linger: Some(linger),
            ..DriverConfig::default()
        }
    }

    /// A segment's count of `n` records read, none of them finished.
    fn in_flight(n: u64) -> AtomicU64 {
        AtomicU64::new(n)
    }

    /// A linger no batch in these tests should wait out.
    const LONG: Duration = Duration::from_secs(30);

    /// A batch that reaches the small-batch size goes at once, not
    /// after the linger. The sender stays open, so the batch cannot end
    /// on a closed channel instead.
    #[test]
    fn a_full_batch_goes_without_waiting_the_linger() {
        let (tx, rx) = channel();
        for _ in 0..4 {
            tx.send(output(SMALL_BATCH_BYTES / 4)).unwrap();
        }
        let (config, read) = (config(LONG), in_flight(10));
        let mut batch = Vec::new();
        let started = Instant::now();
        Gather::new(&config, &read, Spacing::Between).batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(started.elapsed() < LONG);
        assert_eq!(batch.len(), 4);
        drop(tx);
    }

    /// A small batch keeps gathering for the linger while records are in
    /// flight, and takes what comes meanwhile.
    #[test]
    fn a_small_batch_gathers_for_the_linger_while_records_are_in_flight() {
        let (tx, rx) = channel();
        tx.send(output(10)).unwrap();
        let late = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.send(output(10)).unwrap();
        });
        let linger = Duration::from_millis(300);
        let (config, read) = (config(linger), in_flight(1));
        let mut batch = Vec::new();
        let started = Instant::now();
        Gather::new(&config, &read, Spacing::Between).batch(&rx, rx.recv().unwrap(), &mut batch);
        sender.join().unwrap();
        assert!(started.elapsed() >= linger);
        assert_eq!(
            batch.len(),
            2,
            "the result sent during the linger joins the batch"
        );
    }

    /// Once every record read has its `Done` in hand, or the channel
    /// closed, a small batch goes without waiting the linger.
    #[test]
    fn a_small_batch_goes_when_nothing_is_in_flight_or_the_run_ends() {
        let (config, read) = (config(LONG), in_flight(2));
        let mut gather = Gather::new(&config, &read, Spacing::Between);
        let (tx, rx) = channel();
        let done = |offset| Event::Done {
            epoch: 0,
            position: Position {
                partition: 0,
                offset,
            },
            panic: None,
        };
        for event in [output(10), done(0), output(10), done(1)] {
            tx.send(event).unwrap();
        }
        let mut batch = Vec::new();
        let started = Instant::now();
        gather.batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(
            started.elapsed() < LONG,
            "the sender is open: only nothing in flight ends it"
        );
        assert_eq!(batch.len(), 4);

        read.store(3, Ordering::Relaxed);
        tx.send(output(10)).unwrap();
        drop(tx);
        let mut batch = Vec::new();
        let started = Instant::now();
        gather.batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(started.elapsed() < LONG);
        assert_eq!(batch.len(), 1);
    }

    /// With `Between`, batches go a tick apart at the soonest: a lone
    /// result after a quiet spell goes without waiting the tick, one that
    /// comes within a tick of the last batch waits out that tick and takes
    /// what joined it, and one that comes after a quiet tick goes at once.
    #[test]
    fn a_lone_result_goes_at_once_and_batches_go_a_tick_apart() {
        let read = in_flight(0);
        let quiet = ticked(LONG, LONG);
        let (tx, rx) = channel();
        tx.send(output(10)).unwrap();
        let mut batch = Vec::new();
        let started = Instant::now();
        Gather::new(&quiet, &read, Spacing::Between).batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(started.elapsed() < LONG, "nothing came before it");
        assert_eq!(batch.len(), 1);

        let tick = Duration::from_secs(1);
        let paced = ticked(tick, LONG);
        let mut gather = Gather::new(&paced, &read, Spacing::Between);
        tx.send(output(10)).unwrap();
        let mut batch = Vec::new();
        gather.batch(&rx, rx.recv().unwrap(), &mut batch);
        let last = gather.last.unwrap();
        tx.send(output(10)).unwrap();
        let late = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            late.send(output(10)).unwrap();
        });
        let mut batch = Vec::new();
        gather.batch(&rx, rx.recv().unwrap(), &mut batch);
        sender.join().unwrap();
        assert!(last.elapsed() >= tick, "a tick after the batch before it");
        assert_eq!(batch.len(), 2, "what came during the tick joins the batch");

        std::thread::sleep(tick + tick / 10);
        tx.send(output(10)).unwrap();
        let mut batch = Vec::new();
        let started = Instant::now();
        gather.batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(started.elapsed() < tick, "a quiet tick went by before it");
        assert_eq!(batch.len(), 1);
        drop(tx);
    }

    /// A lone record's batch goes once its `Done`, which comes behind its
    /// output, is in: it does not wait a step (half a minute here) for it.
    #[test]
    fn a_lone_record_goes_once_its_done_comes() {
        let read = in_flight(1);
        let config = ticked(LONG, LONG);
        let (tx, rx) = channel();
        tx.send(output(10)).unwrap();
        let late = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.send(Event::Done {
                epoch: 0,
                position: Position {
                    partition: 0,
                    offset: 0,
                },
                panic: None,
            })
            .unwrap();
        });
        let mut batch = Vec::new();
        let started = Instant::now();
        Gather::new(&config, &read, Spacing::Between).batch(&rx, rx.recv().unwrap(), &mut batch);
        sender.join().unwrap();
        assert!(started.elapsed() < LONG);
        assert_eq!(batch.len(), 2);
        drop(tx);
    }

    /// With `AfterFirst` (exactly-once), a batch gathers for a tick after
    /// its first result, even a lone one.
    #[test]
    fn after_first_gathers_a_tick_after_the_first_result() {
        let read = in_flight(0);
        let tick = Duration::from_millis(200);
        let config = ticked(tick, LONG);
        let (tx, rx) = channel();
        tx.send(output(10)).unwrap();
        let mut batch = Vec::new();
        let started = Instant::now();
        Gather::new(&config, &read, Spacing::AfterFirst).batch(&rx, rx.recv().unwrap(), &mut batch);
        assert!(started.elapsed() >= tick);
        assert_eq!(batch.len(), 1);
        drop(tx);
    }

    /// A partition read again while records of its earlier run are still
    /// held: each run's results come out, in its own order, and nothing
    /// stays held.
    #[test]
    fn a_partition_read_again_while_its_earlier_run_is_held_drains_both() {
        let kept = Kept::default();
        let counters = Counters::default();
        let config = DriverConfig::default();
        let mut out = Writer::new(Box::new(kept.clone()), &counters, false, &config);
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        let admitted = |offset| Event::Admitted {
            position: at(offset),
            epoch: 0,
        };
        let result = |offset, payload: &str| Event::Output {
            epoch: 0,
            position: Some(at(offset)),
            key: None,
            own_key: false,
            payload: payload.as_bytes().to_vec(),
            arrived: Instant::now(),
            done: Instant::now(),
        };
        let done = |offset| Event::Done {
            epoch: 0,
            position: at(offset),
            panic: None,
        };
        let written = || -> Vec<String> {
            let kept = kept.0.lock().unwrap();
            let payloads = kept.iter().map(|(_, p)| String::from_utf8_lossy(p));
            payloads.map(|p| p.into_owned()).collect()
        };
        let mut reorder = Reorder::default();
        // The first run holds 5 and 6; the second reads from 3.
        for offset in [5, 6, 3, 4, 5, 6] {
            reorder.push(admitted(offset), &mut out).unwrap();
        }
        let results = [
            (5, "a5"),
            (6, "a6"),
            (3, "b3"),
            (4, "b4"),
            (5, "b5"),
            (6, "b6"),
        ];
        for (offset, payload) in results {
            reorder.push(result(offset, payload), &mut out).unwrap();
            reorder.push(done(offset), &mut out).unwrap();
        }
        assert_eq!(written(), ["a5", "a6", "b3", "b4", "b5", "b6"]);
        assert_eq!(reorder.held(), 0);
        assert!(reorder.earlier.is_empty(), "in order again once drained");

        // The second run's 7 finishes before the first run's: results
        // carry only their position, so its results take the first run's
        // place (d7 before d6), but every result comes out once and
        // nothing stays held.
        for offset in [7, 6, 7] {
            reorder.push(admitted(offset), &mut out).unwrap();
        }
        let results = [(7, "d7"), (6, "d6"), (7, "c7")];
        for (offset, payload) in results {
            reorder.push(result(offset, payload), &mut out).unwrap();
            reorder.push(done(offset), &mut out).unwrap();
        }
        assert_eq!(written().split_off(6), ["d7", "d6", "c7"]);
        assert_eq!(reorder.held(), 0);
        assert!(reorder.earlier.is_empty());
    }

    /// An output as [`Kept`] keeps it: its key and payload.
    type KeptOutput = (Option<Vec<u8>>, Vec<u8>);

    /// A sink that keeps the keys and payloads it is given, and what it
    /// writes to the job's own topics: topic, key and value.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<KeptOutput>>>, Topics);

    type Topics = Arc<Mutex<Vec<(String, String, String)>>>;

    impl Sink for Kept {
        fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
            let kept = (key.map(<[u8]>::to_vec), payload.to_vec());
            self.0.lock().unwrap().push(kept);
            Ok(())
        }

        fn dead_letter(
            &mut self,
            _: Position,
            _: Option<&[u8]>,
            _: &[u8],
            _: &str,
        ) -> Result<(), ConnectorError> {
            Ok(())
        }

        fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }

        fn send_to(
            &mut self,
            topic: &str,
            partition: Option<i32>,
            key: &[u8],
            value: Option<&[u8]>,
        ) -> Result<(), ConnectorError> {
            assert_eq!(partition, None, "a repartition's key picks its partition");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let kept = (topic.to_owned(), text(key), text(value.unwrap_or_default()));
            self.1.lock().unwrap().push(kept);
            Ok(())
        }
    }

    /// An output of `payload` under `key`: the job's own, or with `~` in
    /// front, its input record's.
    fn keyed(key: Option<&str>, payload: &str) -> Event {
        let inherited = key.and_then(|k| k.strip_prefix('~'));
        Event::Output {
            epoch: 0,
            position: None,
            key: inherited.or(key).map(|k| Arc::from(k.as_bytes())),
            own_key: key.is_some() && inherited.is_none(),
            payload: payload.as_bytes().to_vec(),
            arrived: Instant::now(),
            done: Instant::now(),
        }
    }

    /// What `batches` of outputs (key, payload) write, by payload, and how
    /// many were superseded.
    fn written(latest: bool, batches: &[&[(Option<&str>, &str)]]) -> (Vec<String>, u64) {
        let kept = Kept::default();
        let counters = Counters::default();
        let config = DriverConfig {
            latest_per_key: latest,
            ..DriverConfig::default()
        };
        let mut out = Writer::new(Box::new(kept.clone()), &counters, false, &config);
        for batch in batches {
            for (key, payload) in *batch {
                out.write(keyed(*key, payload)).unwrap();
            }
            out.end_batch().unwrap();
        }
        let kept = kept.0.lock().unwrap();
        // Each payload names its key: its first letter (a `~` key keeps
        // the letter after it); `x` has none.
        for (key, payload) in kept.iter() {
            let want: &[u8] = if payload == b"x" { b"" } else { &payload[..1] };
            assert_eq!(key.as_deref().unwrap_or_default(), want);
        }
        let payloads = kept
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned());
        let payloads = payloads.collect();
        (payloads, counters.superseded.load(Ordering::Relaxed))
    }

    /// Of a key's outputs in a batch only the last is written, where it
    /// came; outputs without a key, or with their input record's, keep
    /// their place; a batch does not supersede the one before it.
    #[test]
    fn latest_per_key_writes_a_keys_last_output_of_each_batch_in_its_place() {
        let first: &[(Option<&str>, &str)] = &[
            (Some("a"), "a1"),
            (Some("b"), "b1"),
            (None, "x"),
            (Some("~i"), "i1"),
            (Some("a"), "a2"),
            (Some("c"), "c1"),
            (Some("~i"), "i2"),
            (Some("i"), "i3"),
            (Some("a"), "a3"),
            (Some("i"), "i4"),
        ];
        let second: &[(Option<&str>, &str)] = &[(Some("b"), "b2"), (Some("a"), "a4")];
        let (payloads, superseded) = written(true, &[first, second]);
        let latest = ["b1", "x", "i1", "c1", "i2", "a3", "i4", "b2", "a4"];
        assert_eq!(payloads, latest);
        assert_eq!(superseded, 3);
        let (payloads, superseded) = written(false, &[first, second]);
        let every = [
            "a1", "b1", "x", "i1", "a2", "c1", "i2", "i3", "a3", "i4", "b2", "a4",
        ];
        assert_eq!(payloads, every);
        assert_eq!(superseded, 0);
    }

    /// Adds; refuses to add a zero.
    struct Sum;

    impl Combiner for Sum {
        fn combine(
            &self,
            held: &mut Box<dyn Any + Send>,
            next: Box<dyn Any + Send>,
        ) -> Result<(), Box<dyn Any + Send>> {
            let n = *next.downcast_ref::<u64>().unwrap();
            if n == 0 {
                return Err(next);
            }
            *held = Box::new(held.downcast_ref::<u64>().unwrap() + n);
            Ok(())
        }

        fn encode(&self, value: &(dyn Any + Send)) -> Result<Vec<u8>, String> {
            Ok(value
                .downcast_ref::<u64>()
                .unwrap()
                .to_string()
                .into_bytes())
        }
    }

    /// A batch's records of a key for a combining repartition are written
    /// as one at the batch's end, per topic; a pair that does not combine
    /// is written at once, in order, and the key starts again after it; a
    /// batch does not combine with the one before it.
    #[test]
    fn a_batchs_records_of_a_key_are_combined_before_the_repartition() {
        let kept = Kept::default();
        let counters = Counters::default();
        let config = DriverConfig::default();
        let mut out = Writer::new(Box::new(kept.clone()), &counters, false, &config);
        let combiner: Arc<dyn Combiner> = Arc::new(Sum);
        let record = |topic: &str, key: &str, n: u64| Event::Combined {
            epoch: 0,
            position: None,
            topic: Arc::from(topic),
            key: key.as_bytes().to_vec(),
            value: Box::new(n),
            combiner: combiner.clone(),
        };
        let first = [
            record("r", "a", 1),
            record("r", "b", 2),
            record("r", "a", 3),
            record("s", "a", 10),
            record("r", "a", 0),
            record("r", "a", 5),
            record("r", "b", 6),
            record("r", "a", 7),
        ];
        for event in first {
            out.write(event).unwrap();
        }
        let written = |kept: &Kept| kept.1.lock().unwrap().clone();
        let row = |t: &str, k: &str, v: &str| (t.to_owned(), k.to_owned(), v.to_owned());
        assert_eq!(
            written(&kept),
            [row("r", "a", "4"), row("r", "a", "0")],
            "only the pair that does not combine is written before the end, in order"
        );
        out.end_batch().unwrap();
        let mut at_end = written(&kept).split_off(2);
        at_end.sort();
        assert_eq!(
            at_end,
            [row("r", "a", "12"), row("r", "b", "8"), row("s", "a", "10")]
        );
        // 3 into 1, 6 into 2, 7 into 5.
        assert_eq!(counters.combined.load(Ordering::Relaxed), 3);
        out.write(record("r", "a", 6)).unwrap();
        out.end_batch().unwrap();
        assert_eq!(written(&kept).last(), Some(&row("r", "a", "6")));
        assert_eq!(written(&kept).len(), 6);
        assert_eq!(counters.combined.load(Ordering::Relaxed), 3);
    }
}
