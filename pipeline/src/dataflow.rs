//! The dataflow API: a typed job, in the spirit of Flink's DataStream.
//!
//! A job starts from the raw [`Input`] (bytes and their metadata), decodes
//! it into a type of its own, runs it through stages that may change the
//! type, and ends in a sink stage that encodes the result:
//!
//! ```
//! use fila_pipeline::dataflow::{Job, Rejected};
//!
//! let job = Job::new("lengths")
//!     .decode(|input| Ok(String::from_utf8_lossy(input.payload()).into_owned()))
//!     .filter("not empty", |line: &String| Ok(!line.is_empty()))
//!     .flat_map("words", |line: String| {
//!         Ok(line.split(' ').map(str::to_owned).collect::<Vec<_>>())
//!     })
//!     .map("length", |word: String| Ok(word.len()))
//!     .sink(|n: &usize| n.to_string().into_bytes());
//! assert_eq!(job.run_inline(b"ab cde").unwrap(), [b"2".to_vec(), b"3".to_vec()]);
//! ```
//!
//! Each stage runs as its own task of the record's runtime unit, so any
//! worker can run any stage, and a record's next stage is scheduled depth
//! first on the worker that ran the previous one. A `flat_map` spawns one
//! task per output: they all belong to the parent record's unit, which
//! holds one window slot, and the record completes (and its position is
//! acknowledged) only once every one of them has been written. Decoding and
//! the first stage share the first task, and the sink runs in the task of
//! the last stage, as they are cheap.
//!
//! Every stage function returns a `Result`: an `Err(Rejected)` sends the
//! input record to the dead-letter destination with the reason, prefixed
//! by the stage's name. A panic in a stage is caught by the runtime and
//! dead-letters the record too. After a `flat_map`, each output that fails
//! dead-letters the input once more; the other outputs still go out.
//!
//! Keyed state (`key_by(..).reduce(..)`, windows) is in [`crate::state`].

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Instant;

use fila_connectors::Position;
use fila_runtime::TaskCx;

use crate::order::{Gate, Stateful};
use crate::outlet::{Event, Origin, Outlet, Tickets};

/// A record was rejected: it goes to the dead-letter destination with this
/// reason, and its position still counts as handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

impl Rejected {
    pub fn new(reason: impl Into<String>) -> Rejected {
        Rejected(reason.into())
    }
}

/// One input record as the job's decoder sees it: the payload and what
/// the source knows about it.
#[derive(Debug, Clone)]
pub struct Input {
    pub(crate) payload: Arc<[u8]>,
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) position: Position,
}

impl Input {
    /// The record `envelope` brought, and its origin, which shares its
    /// bytes.
    pub(crate) fn from_envelope(
        envelope: fila_connectors::Envelope,
        epoch: u64,
    ) -> (Input, Origin) {
        let payload: Arc<[u8]> = envelope.payload.as_slice().into();
        let key: Option<Arc<[u8]>> = envelope.key.as_deref().map(Into::into);
        let origin = Origin::of(&envelope, key.clone(), payload.clone(), epoch);
        let input = Input {
            payload,
            key,
            headers: envelope.headers,
            timestamp: envelope.timestamp,
            position: envelope.position,
        };
        (input, origin)
    }

    /// A record with no key, headers or timestamp, at partition 0.
    pub fn new(payload: &[u8], offset: i64) -> Input {
        Input {
            payload: payload.into(),
            key: None,
            headers: Vec::new(),
            timestamp: None,
            position: Position {
                partition: 0,
                offset,
            },
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The Kafka record's key; `None` for sources without keys.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The Kafka record's headers, in order (none on other sources, and
    /// none on the `kafka` client, whose protocol has no headers).
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The Kafka record's timestamp, in milliseconds since the Unix epoch.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The partition the record was read from (0 for stdin and generate).
    pub fn partition(&self) -> i32 {
        self.position.partition
    }

    /// Its offset (the line number on stdin, the index in a burst).
    pub fn offset(&self) -> i64 {
        self.position.offset
    }

    /// Decodes the payload as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Rejected> {
        serde_json::from_slice(&self.payload).map_err(|e| Rejected(format!("not JSON: {e}")))
    }

    /// Builder-style setters, for tests and sources of one's own.
    pub fn with_key(mut self, key: &[u8]) -> Input {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: &str, value: &[u8]) -> Input {
        self.headers.push((name.to_owned(), value.to_vec()));
        self
    }

    pub fn with_timestamp(mut self, ms: i64) -> Input {
        self.timestamp = Some(ms);
        self
    }

    pub fn with_partition(mut self, partition: i32) -> Input {
        self.position.partition = partition;
        self
    }
}

/// How a stage hands work on: as a task of the record's runtime unit, or,
/// off the runtime, onto a local queue run by the caller.
pub(crate) enum Exec<'a, 'b> {
    Task(&'a mut TaskCx<'b>),
    Inline(&'a mut Vec<InlineTask>),
}

pub(crate) type InlineTask = Box<dyn for<'x, 'y> FnOnce(&mut Exec<'x, 'y>) + Send>;

impl Exec<'_, '_> {
    /// Holds a follow-on of the record's unit (`TaskCx::hold`); `None` off
    /// the runtime, where records run one at a time.
    pub(crate) fn hold(&mut self) -> Option<fila_runtime::Held> {
        match self {
            Exec::Task(cx) => Some(cx.hold()),
            Exec::Inline(_) => None,
        }
    }

    fn spawn<F>(&mut self, f: F)
    where
        F: for<'x, 'y> FnOnce(&mut Exec<'x, 'y>) + Send + 'static,
    {
        match self {
            Exec::Task(cx) => cx.spawn(move |cx| f(&mut Exec::Task(cx))),
            Exec::Inline(queue) => queue.push(Box::new(f)),
        }
    }
}

/// Runs `first` and everything it spawns on the calling thread, in the
/// order spawned.
pub(crate) fn run_inline_tasks(first: impl for<'x, 'y> FnOnce(&mut Exec<'x, 'y>)) {
    // Depth first: what a task spawned runs before its siblings.
    let (mut stack, mut spawned) = (Vec::new(), Vec::new());
    first(&mut Exec::Inline(&mut spawned));
    stack.extend(spawned.drain(..).rev());
    while let Some(task) = stack.pop() {
        task(&mut Exec::Inline(&mut spawned));
        stack.extend(spawned.drain(..).rev());
    }
}

/// One stage of a built job, taking records of type `T`.
pub(crate) trait Node<T>: Send + Sync + 'static {
    fn push(&self, record: T, out: Outlet, exec: &mut Exec<'_, '_>);

    /// Cheap enough to run in the task that produced its input (the sink).
    fn inline(&self) -> bool {
        false
    }
}

pub(crate) type NodeRef<T> = Arc<dyn Node<T>>;

/// Hands `record` to `next`: in the current task if `next` is inline, else
/// as a new task of the same unit.
pub(crate) fn forward<T: Send + 'static>(
    next: &NodeRef<T>,
    record: T,
    out: Outlet,
    exec: &mut Exec<'_, '_>,
) {
    if next.inline() {
        next.push(record, out, exec);
    } else {
        let next = next.clone();
        exec.spawn(move |exec| next.push(record, out, exec));
    }
}

pub(crate) fn stage_error(name: &str, e: Rejected) -> Rejected {
    Rejected(format!("stage {name}: {}", e.0))
}

/// Something to do once a bounded input has ended: close open windows.
pub(crate) trait Finish: Send + Sync + 'static {
    fn finish(&self, out: Outlet, exec: &mut Exec<'_, '_>);
}

/// What building a job collects besides its chain of nodes.
#[derive(Default)]
pub(crate) struct Parts {
    /// What to close at the end of a bounded input, downstream first.
    pub(crate) finishers: Vec<Arc<dyn Finish>>,
    /// The keyed stages, each at the index it was built with
    /// (`InOrder::build`), to give records their places at (`order.rs`).
    pub(crate) gates: Vec<Arc<dyn Gate>>,
    /// The keyed stages, whose state can be written to a changelog.
    pub(crate) stateful: Vec<Arc<dyn Stateful>>,
    /// The segments downstream of each repartition built so far,
    /// downstream first ([`Parts::split`]).
    segments: Vec<Segment>,
    /// Where the segment being built starts in `gates` and `stateful`.
    gates_from: usize,
    stateful_from: usize,
}

/// A part of a job that runs from one topic: the input, or a repartition
/// topic written by the part before it. Only a run on Kafka splits a job
/// into its segments; elsewhere a repartition hands records straight on,
/// and the job runs as one.
pub(crate) struct Segment {
    /// Where its records enter: the job's decoder, or the decoder of a
    /// repartition topic's records.
    root: NodeRef<Input>,
    /// The repartition that writes its input; none for the first.
    boundary: Option<Arc<dyn Boundary>>,
    /// Its keyed stages, by their index in the job's.
    gates: std::ops::Range<usize>,
    stateful: Vec<Arc<dyn Stateful>>,
}

/// A repartition: the end of one segment and the topic of the next.
pub(crate) trait Boundary: Send + Sync + 'static {
    /// The keyed stage it feeds, which names the topic.
    fn stage(&self) -> &str;

    /// The topic, set once, when the job runs on Kafka.
    fn topic(&self) -> &std::sync::OnceLock<Arc<str>>;
}

impl Parts {
    /// Closes the segment built so far (downstream of a repartition):
    /// its records enter at `root`, from the topic `boundary` writes.
    pub(crate) fn split(&mut self, boundary: Arc<dyn Boundary>, root: NodeRef<Input>) {
        self.segments.push(Segment {
            root,
            boundary: Some(boundary),
            gates: self.gates_from..self.gates.len(),
            stateful: self.stateful[self.stateful_from..].to_vec(),
        });
        self.gates_from = self.gates.len();
        self.stateful_from = self.stateful.len();
    }
}

/// Builds the nodes upstream of a stream, given its downstream node.
type Build<T> = Box<dyn FnOnce(NodeRef<T>, &mut Parts) -> NodeRef<Input>>;

/// A job under construction whose records are of type `T`.
pub struct Stream<T> {
    name: String,
    build: Build<T>,
}

/// A job with a name and nothing else yet; [`JobBuilder::decode`] starts
/// its stream.
pub struct JobBuilder {
    name: String,
}

/// A complete job: input in, stages, bytes out.
pub struct Job {
    name: String,
    root: NodeRef<Input>,
    /// Upstream first.
    finishers: Vec<Arc<dyn Finish>>,
    gates: Vec<Arc<dyn Gate>>,
    /// The job's segments, the first reading the input: more than one
    /// when it re-keys (`Segment`).
    segments: Vec<Segment>,
    /// Records given places so far, by segment and partition: the next
    /// one's number. Locked by the admitting threads.
    read: parking_lot::Mutex<HashMap<(usize, i32), u64>>,
}

impl Job {
    /// Starts a job; name it after what it computes.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(name: impl Into<String>) -> JobBuilder {
        JobBuilder { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the job keeps windows that the end of a bounded input
    /// closes.
    pub fn has_windows(&self) -> bool {
        !self.finishers.is_empty()
    }

    /// Runs the whole job on one record on the calling thread, with no
    /// scheduler: what a plain thread does in calibration, and a reference
    /// for tests. Returns the outputs, or the first rejection. Keyed state
    /// is the job's own, so it carries over between calls.
    pub fn run_inline(&self, payload: &[u8]) -> Result<Vec<Vec<u8>>, Rejected> {
        self.run_input_inline(Input::new(payload, 0))
    }

    /// `run_inline` with the record's metadata.
    pub fn run_input_inline(&self, input: Input) -> Result<Vec<Vec<u8>>, Rejected> {
        let (tx, rx) = mpsc::channel();
        let origin = Origin {
            position: input.position,
            key: input.key.clone(),
            payload: input.payload.clone(),
            arrived: Instant::now(),
            epoch: 0,
        };
        let out = Outlet::new(tx, &origin);
        run_inline_tasks(|exec| self.root.push(input, out, exec));
        collect(rx)
    }

    /// Closes every open window on the calling thread and returns what
    /// they emit, as the end of a bounded input does.
    pub fn finish_inline(&self) -> Result<Vec<Vec<u8>>, Rejected> {
        let (tx, rx) = mpsc::channel();
        self.finish(&tx, Instant::now());
        drop(tx);
        collect(rx)
    }

    /// Closes every open window, upstream first, sending results to `tx`.
    pub(crate) fn finish(&self, tx: &Sender<Event>, arrived: Instant) {
        for finisher in &self.finishers {
            let out = Outlet::of_no_record(tx.clone(), arrived);
            let finisher = finisher.clone();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_inline_tasks(|exec| finisher.finish(out, exec))
            }));
            if let Err(payload) = ran {
                let reason = format!(
                    "a stage panicked while closing windows: {}",
                    fila_runtime::panic_message(payload.as_ref())
                );
                Outlet::reject_no_record(tx, reason);
            }
        }
    }

    /// The keyed stages' names, which name their changelog topics.
    pub fn keyed_stages(&self) -> Vec<String> {
        self.stateful().map(|s| s.name().to_owned()).collect()
    }

    fn stateful(&self) -> impl Iterator<Item = &Arc<dyn Stateful>> {
        self.segments.iter().flat_map(|s| &s.stateful)
    }

    /// The keyed stages fed by a repartition (`key_by` without
    /// `by_input_partition`), in the order records reach them: on Kafka
    /// each starts a segment of its own, reading a repartition topic.
    pub fn repartitions(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| Some(s.boundary.as_ref()?.stage().to_owned()))
            .collect()
    }

    /// Runs the job on Kafka: each repartition writes to the topic
    /// `repartition(stage)`, read by the segment after it, and each keyed
    /// stage writes its changelog to `changelog(stage)`, so that its state
    /// is durable. Before the job runs, once. Returns the repartition
    /// topics, then the changelog topics. Fails if two stages would share
    /// a topic, or the job was given its topics already.
    pub fn attach_topics(
        &self,
        repartition: impl Fn(&str) -> String,
        changelog: impl Fn(&str) -> String,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let boundaries: Vec<&Arc<dyn Boundary>> = self
            .segments
            .iter()
            .filter_map(|s| s.boundary.as_ref())
            .collect();
        let repartitions: Vec<String> = boundaries.iter().map(|b| repartition(b.stage())).collect();
        let changelogs: Vec<String> = self.stateful().map(|s| changelog(s.name())).collect();
        let all: Vec<&String> = repartitions.iter().chain(&changelogs).collect();
        for (i, topic) in all.iter().enumerate() {
            if all[..i].contains(topic) {
                return Err(format!(
                    "two keyed stages would share topic {topic}: give them different names"
                ));
            }
        }
        let taken = |what: &str| format!("the job has its {what} topics already");
        for (boundary, topic) in boundaries.iter().zip(&repartitions) {
            boundary
                .topic()
                .set(topic.as_str().into())
                .map_err(|_| taken("repartition"))?;
        }
        for (stage, topic) in self.stateful().zip(&changelogs) {
            stage
                .changelog()
                .set(topic.as_str().into())
                .map_err(|_| taken("changelog"))?;
        }
        Ok((repartitions, changelogs))
    }

    /// How many segments a run on Kafka runs, one driver each: one, and
    /// one more per repartition once the topics are attached.
    pub fn segments(&self) -> usize {
        if self.split() {
            self.segments.len()
        } else {
            1
        }
    }

    /// Whether the job runs as its segments (its repartition topics are
    /// attached) rather than as one.
    fn split(&self) -> bool {
        self.segments.iter().any(|s| {
            s.boundary
                .as_ref()
                .is_some_and(|b| b.topic().get().is_some())
        })
    }

    /// The keyed stages segment `segment` runs; when the job runs as one,
    /// every keyed stage, in segment 0.
    fn stateful_of(&self, segment: usize) -> Vec<&Arc<dyn Stateful>> {
        if self.split() {
            self.segments[segment].stateful.iter().collect()
        } else {
            self.stateful().collect()
        }
    }

    /// Whether segment `segment` writes changelogs (they were attached).
    pub(crate) fn has_changelogs(&self, segment: usize) -> bool {
        self.stateful_of(segment)
            .iter()
            .any(|s| s.changelog().get().is_some())
    }

    /// Whether every record of `partition` that segment `segment` has
    /// given a place so far has passed `stage`.
    fn drained(&self, stage: &dyn Stateful, segment: usize, partition: i32) -> bool {
        let issued = self
            .read
            .lock()
            .get(&(segment, partition))
            .copied()
            .unwrap_or(0);
        stage.drained(partition, issued)
    }

    /// Rebuilds `partition`'s state at every keyed stage of `segment`
    /// from its changelog, once every record of the partition admitted so
    /// far has passed those stages. Returns the records read. Called by
    /// the segment's admitting thread, before the partition's next record
    /// is admitted.
    pub(crate) fn restore(
        &self,
        segment: usize,
        partition: i32,
        reader: &mut dyn fila_connectors::ChangelogReader,
    ) -> Result<u64, String> {
        let stages = self.stateful_of(segment);
        for stage in &stages {
            while !self.drained(stage.as_ref(), segment, partition) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let mut read = 0;
        for stage in stages {
            read += stage.restore(partition, reader)?;
        }
        Ok(read)
    }

    /// Drops `partition`'s state at every keyed stage of `segment`, if
    /// every record of it admitted so far has passed them; returns
    /// whether it did. For a partition that moved to another member: its
    /// state comes back from the changelog should it return. Called by
    /// the segment's admitting thread, which admits no record meanwhile.
    pub(crate) fn forget(&self, segment: usize, partition: i32) -> bool {
        let stages = self.stateful_of(segment);
        if !stages
            .iter()
            .all(|stage| self.drained(stage.as_ref(), segment, partition))
        {
            return false;
        }
        for stage in stages {
            stage.forget(partition);
        }
        true
    }

    /// Places for the next record read from `partition` by segment
    /// `segment`, at every keyed stage it runs, in its partition's input
    /// order: the driver takes them as it admits the record, before any
    /// of its tasks can run.
    pub(crate) fn tickets(&self, segment: usize, partition: i32) -> Tickets {
        let gates = if self.split() {
            &self.gates[self.segments[segment].gates.clone()]
        } else {
            &self.gates[..]
        };
        if gates.is_empty() {
            return Tickets::None;
        }
        let seq = {
            let mut read = self.read.lock();
            let next = read.entry((segment, partition)).or_default();
            *next += 1;
            *next - 1
        };
        Tickets::of(
            gates
                .iter()
                .map(|gate| Arc::new(gate.clone().ticket(partition, seq)))
                .collect(),
        )
    }

    /// The first task of a record read by segment `segment`.
    pub(crate) fn start(
        self: &Arc<Self>,
        segment: usize,
        input: Input,
        out: Outlet,
    ) -> impl FnOnce(&mut TaskCx<'_>) + Send + 'static {
        let root = self.segments[segment].root.clone();
        move |cx| root.push(input, out, &mut Exec::Task(cx))
    }
}

fn collect(rx: mpsc::Receiver<Event>) -> Result<Vec<Vec<u8>>, Rejected> {
    let mut outputs = Vec::new();
    for event in rx.try_iter() {
        match event {
            Event::Output { payload, .. } => outputs.push(payload),
            Event::Rejected { reason, .. } => return Err(Rejected(reason)),
            Event::Admitted { .. }
            | Event::Internal { .. }
            | Event::Combined { .. }
            | Event::Done { .. } => {}
        }
    }
    Ok(outputs)
}

impl JobBuilder {
    /// Decodes the input: the stream's first type.
    pub fn decode<T: Send + 'static>(
        self,
        f: impl Fn(&Input) -> Result<T, Rejected> + Send + Sync + 'static,
    ) -> Stream<T> {
        Stream {
            name: self.name,
            build: Box::new(move |next, _| Arc::new(Decode { f, next })),
        }
    }
}

struct Decode<T, F> {
    f: F,
    next: NodeRef<T>,
}

impl<T, F> Node<Input> for Decode<T, F>
where
    T: Send + 'static,
    F: Fn(&Input) -> Result<T, Rejected> + Send + Sync + 'static,
{
    fn push(&self, input: Input, out: Outlet, exec: &mut Exec<'_, '_>) {
        match (self.f)(&input) {
            Ok(record) => {
                drop(input);
                // The first stage runs in the record's first task.
                self.next.push(record, out, exec)
            }
            Err(reason) => out.reject(reason.0),
        }
    }
}

impl<T: Send + 'static> Stream<T> {
    /// Appends a stage built from its downstream node.
    pub(crate) fn then<U: Send + 'static>(
        self,
        node: impl FnOnce(NodeRef<U>, &mut Parts) -> NodeRef<T> + 'static,
    ) -> Stream<U> {
        let build = self.build;
        Stream {
            name: self.name,
            build: Box::new(move |next, parts| {
                let this = node(next, parts);
                build(this, parts)
            }),
        }
    }

    /// One record in, one record out, of any type.
    pub fn map<U: Send + 'static>(
        self,
        name: impl Into<String>,
        f: impl Fn(T) -> Result<U, Rejected> + Send + Sync + 'static,
    ) -> Stream<U> {
        let name = name.into();
        self.then(move |next, _| Arc::new(Map { name, f, next }))
    }

    /// Keeps the records for which `f` is true; the others complete with
    /// no output.
    pub fn filter(
        self,
        name: impl Into<String>,
        f: impl Fn(&T) -> Result<bool, Rejected> + Send + Sync + 'static,
    ) -> Stream<T> {
        let name = name.into();
        self.then(move |next, _| Arc::new(Filter { name, f, next }))
    }

    /// Zero or more records out per record in. Each output runs the rest
    /// of the job as a task of its own, within the input record's unit.
    pub fn flat_map<U, I>(
        self,
        name: impl Into<String>,
        f: impl Fn(T) -> Result<I, Rejected> + Send + Sync + 'static,
    ) -> Stream<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U>,
    {
        let name = name.into();
        self.then(move |next, _| Arc::new(FlatMap { name, f, next }))
    }

    /// The end of the job: each record becomes one output, under the key
    /// of the input record it came from.
    pub fn sink(self, encode: impl Fn(&T) -> Vec<u8> + Send + Sync + 'static) -> Job {
        self.sink_keyed(move |record| (None, encode(record)))
    }

    /// The end of the job, setting each output's key: `Some(key)`, or
    /// `None` to keep the input record's.
    pub fn sink_keyed(
        self,
        encode: impl Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + Send + Sync + 'static,
    ) -> Job {
        let mut parts = Parts::default();
        let root = (self.build)(Arc::new(Sink { encode }), &mut parts);
        let Parts {
            mut finishers,
            gates,
            stateful,
            mut segments,
            gates_from,
            stateful_from,
        } = parts;
        segments.push(Segment {
            root: root.clone(),
            boundary: None,
            gates: gates_from..gates.len(),
            stateful: stateful[stateful_from..].to_vec(),
        });
        // Built downstream first; windows close upstream first, and the
        // input's segment is the first.
        finishers.reverse();
        segments.reverse();
        Job {
            name: self.name,
            root,
            finishers,
            gates,
            segments,
            read: Default::default(),
        }
    }
}

struct Map<U, F> {
    name: String,
    f: F,
    next: NodeRef<U>,
}

impl<T, U, F> Node<T> for Map<U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(T) -> Result<U, Rejected> + Send + Sync + 'static,
{
    fn push(&self, record: T, out: Outlet, exec: &mut Exec<'_, '_>) {
        match (self.f)(record) {
            Ok(record) => forward(&self.next, record, out, exec),
            Err(e) => out.reject(stage_error(&self.name, e).0),
        }
    }
}

struct Filter<T, F> {
    name: String,
    f: F,
    next: NodeRef<T>,
}

impl<T, F> Node<T> for Filter<T, F>
where
    T: Send + 'static,
    F: Fn(&T) -> Result<bool, Rejected> + Send + Sync + 'static,
{
    fn push(&self, record: T, out: Outlet, exec: &mut Exec<'_, '_>) {
        match (self.f)(&record) {
            Ok(true) => forward(&self.next, record, out, exec),
            Ok(false) => {}
            Err(e) => out.reject(stage_error(&self.name, e).0),
        }
    }
}

struct FlatMap<U, F> {
    name: String,
    f: F,
    next: NodeRef<U>,
}

impl<T, U, I, F> Node<T> for FlatMap<U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    I: IntoIterator<Item = U>,
    F: Fn(T) -> Result<I, Rejected> + Send + Sync + 'static,
{
    fn push(&self, record: T, out: Outlet, exec: &mut Exec<'_, '_>) {
        match (self.f)(record) {
            Ok(records) => {
                for record in records {
                    forward(&self.next, record, out.clone(), exec);
                }
            }
            Err(e) => out.reject(stage_error(&self.name, e).0),
        }
    }
}

struct Sink<F> {
    encode: F,
}

impl<T, F> Node<T> for Sink<F>
where
    T: Send + 'static,
    F: Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + Send + Sync + 'static,
{
    fn push(&self, record: T, out: Outlet, _: &mut Exec<'_, '_>) {
        let (key, payload) = (self.encode)(&record);
        drop(record);
        out.output(key.map(Into::into), payload);
    }

    fn inline(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition's state dropped by `forget` starts over: the next
    /// record of a key counts 1 again, and the other partitions keep
    /// theirs.
    #[test]
    fn forget_drops_one_partitions_state_and_keeps_the_others() {
        let job = Job::new("counts")
            .decode(|input| Ok((input.payload().to_vec(), 1u64)))
            .key_by(|(key, _): &(Vec<u8>, u64)| key.clone())
            .by_input_partition()
            .reduce("count", |(key, a): &(Vec<u8>, u64), (_, b)| {
                Ok((key.clone(), a + b))
            })
            .sink(|(_, n): &(Vec<u8>, u64)| n.to_string().into_bytes());
        let count = |partition: i32| -> String {
            let input = Input {
                position: Position {
                    partition,
                    offset: 0,
                },
                ..Input::new(b"k", 0)
            };
            let out = job.run_input_inline(input).unwrap();
            String::from_utf8(out.concat()).unwrap()
        };
        assert_eq!(
            (count(0), count(0), count(1)),
            ("1".into(), "2".into(), "1".into())
        );
        // No record of partition 0 is at the stage: it drains at once.
        assert!(job.forget(0, 0));
        assert_eq!((count(0), count(1)), ("1".into(), "2".into()));
    }
}
