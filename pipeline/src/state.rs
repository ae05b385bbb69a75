//! Keyed state: the rolling `reduce` of a keyed stream, and tumbling
//! event-time windows.
//!
//! State lives with the job, in memory, in lock-striped shards: a key
//! hashes to one of [`SHARDS`] shards, each a small mutex-guarded map. An
//! update takes its shard's lock for one call of the user's reduce
//! function and a map write, so a key's state is never touched by two
//! workers at once, while any worker still runs any stage. Both keyed
//! stages apply records in each input partition's order (`order.rs`).
//! Why no update is lost, why the order holds, what a restart keeps, and
//! what the locks cost are in docs/design/state.md.

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dataflow::{
    forward, stage_error, Boundary, Exec, Input, Node, NodeRef, Rejected, Stream,
};
use crate::order::{InOrder, Step};
use crate::outlet::{Combiner, Outlet};

/// Shards per keyed stage. Two workers contend only when their keys hash
/// to the same shard, and then for one reduce call.
pub const SHARDS: usize = 64;

/// One lock of a striped map.
type Shard<M> = CachePadded<Mutex<M>>;

/// How keyed state hashes its keys: foldhash, seeded at random for each
/// map. Every record of a keyed stage hashes its key at least once, and a
/// restore hashes every key it reads, so the hash is on the hot path.
/// The trade-off against the standard library's SipHash: foldhash is
/// much cheaper per short key, and its random seed keeps a producer from
/// crafting keys that collide, unless it can study the process at length
/// (it is not a keyed cryptographic hash, which SipHash is meant to be).
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// A map of keyed state: see [`KeyHasher`].
pub(crate) type KeyMap<K, V> = HashMap<K, V, KeyHasher>;

/// The largest table a restore makes for a map before it reads its keys
/// ([`Reduce`]'s `reserve`); a larger state grows as it is read.
const RESERVE_BYTES: usize = 256 << 20;

/// How many keys a restore of `records` changelog records makes room
/// for: all of them, unless the table would pass [`RESERVE_BYTES`]. A
/// slot of the table is a key, its value and a control byte; the map
/// keeps at most 7/8 of its slots full and rounds their number up to a
/// power of two, hence the margin.
fn room_for<K, T>(records: u64) -> usize {
    let slot = std::mem::size_of::<(K, T)>() + 1;
    let room = RESERVE_BYTES / slot / 2 * 7 / 8;
    usize::try_from(records).map_or(room, |n| n.min(room))
}

/// Windows by start, each with its keys' values.
type Windows<K, T> = BTreeMap<i64, KeyMap<K, T>>;

/// Per-key values of type `V`, striped over [`SHARDS`] locks.
pub struct KeyedState<K, V> {
    hasher: KeyHasher,
    shards: Box<[Shard<KeyMap<K, V>>]>,
}

impl<K: Hash + Eq, V: Clone> Default for KeyedState<K, V> {
    fn default() -> Self {
        KeyedState {
            // A seed of its own, apart from the shards' maps': a shard's
            // keys share their low bits of this hash.
            hasher: KeyHasher::default(),
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
        }
    }
}

impl<K: Hash + Eq, V: Clone> KeyedState<K, V> {
    /// Replaces `key`'s value with `f(current)` and returns the new value.
    /// The shard's lock is held across the read, `f` and the write, so
    /// updates of one key are serialized and none is lost. If `f` fails
    /// or panics, the value is left as it was: an update applies whole or
    /// not at all.
    pub fn update<E>(&self, key: K, f: impl FnOnce(Option<&V>) -> Result<V, E>) -> Result<V, E> {
        let shard = &self.shards[self.hasher.hash_one(&key) as usize % SHARDS];
        let mut map = shard.lock();
        match map.entry(key) {
            Entry::Occupied(mut e) => {
                let new = f(Some(e.get()))?;
                e.insert(new.clone());
                Ok(new)
            }
            Entry::Vacant(e) => {
                let new = f(None)?;
                e.insert(new.clone());
                Ok(new)
            }
        }
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<V> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        shard.lock().get(key).cloned()
    }

    /// Keys with a value.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type KeyFn<K, T> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A stream whose records are grouped by a key, for keyed stages.
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key: KeyFn<K, T>,
    /// Set by [`KeyedStream::by_input_partition`]: every record of a key
    /// comes from one input partition, so no repartition is needed.
    by_input_partition: bool,
}

/// How a partitioned stage's keys and values become changelog records,
/// and back.
pub(crate) struct Codec<K, T> {
    encode_key: fn(&K) -> Vec<u8>,
    encode_value: fn(&T) -> Vec<u8>,
    decode_key: fn(&[u8]) -> Result<K, String>,
    decode_value: fn(&[u8]) -> Result<T, String>,
    /// A key in a window: `[start, key]`.
    encode_window_key: fn(i64, &K) -> Vec<u8>,
    decode_window_key: fn(&[u8]) -> Result<WindowKey<K>, String>,
}

/// A key in the window that starts at the first field.
type WindowKey<K> = (i64, K);

impl<K, T> Clone for Codec<K, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, T> Copy for Codec<K, T> {}

fn encode_json<X: Serialize>(x: &X) -> Vec<u8> {
    // Keys and values are the job's own plain data: a type that cannot
    // be written as JSON (a map with keys that are not strings) is a bug
    // of the job, caught by its first record.
    try_encode_json(x).expect("keyed state must serialize as JSON")
}

/// [`encode_json`], with the error returned: for the sink thread, where a
/// panic would stop the run without saying why.
fn try_encode_json<X: Serialize>(x: &X) -> Result<Vec<u8>, String> {
    serde_json::to_vec(x).map_err(|e| e.to_string())
}

fn decode_json<X: DeserializeOwned>(bytes: &[u8]) -> Result<X, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn encode_window_key<K: Serialize>(start: i64, key: &K) -> Vec<u8> {
    encode_json(&(start, key))
}

impl<K, T> Codec<K, T>
where
    K: Serialize + DeserializeOwned,
    T: Serialize + DeserializeOwned,
{
    fn json() -> Codec<K, T> {
        Codec {
            encode_key: encode_json::<K>,
            encode_value: encode_json::<T>,
            decode_key: decode_json::<K>,
            decode_value: decode_json::<T>,
            encode_window_key: encode_window_key::<K>,
            decode_window_key: decode_json::<WindowKey<K>>,
        }
    }
}

impl<T: Send + 'static> Stream<T> {
    /// Groups records by `key` for a keyed stage (`reduce`, `window`).
    pub fn key_by<K>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T>
    where
        K: Hash + Eq + Send + Sync + 'static,
    {
        KeyedStream {
            stream: self,
            key: Arc::new(key),
            by_input_partition: false,
        }
    }
}

impl<K, T> KeyedStream<K, T>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The stream the keyed stage reads: on Kafka through a repartition
    /// topic unless the input is declared keyed by the key already.
    fn keyed_input(
        stream: Stream<T>,
        stage: &str,
        key: &KeyFn<K, T>,
        by_input_partition: bool,
        combiner: Option<Arc<dyn Combiner>>,
    ) -> Stream<T> {
        if by_input_partition {
            return stream;
        }
        let (stage, key) = (stage.to_owned(), key.clone());
        stream.then(move |next, parts| {
            let boundary = Arc::new(Repartition {
                stage,
                key,
                codec: Codec::json(),
                topic: OnceLock::new(),
                combiner,
                next: next.clone(),
            });
            let decode = boundary.codec.decode_value;
            parts.split(boundary.clone(), Arc::new(Rekeyed { decode, next }));
            boundary
        })
    }

    /// Declares that every record of a key comes from one input
    /// partition: the input topic is keyed by this key, as Kafka's keyed
    /// records are. The stage then reads the input's partitions as they
    /// are, and keeps its state per input partition.
    ///
    /// Without it, on Kafka, the records go through a repartition topic
    /// keyed by this key first, so that each key lives in one partition
    /// of it; elsewhere (stdin, generate) the stage keeps one table for
    /// the whole job. Either way, on Kafka (rdkafka client) the state is
    /// durable: each update is written to the stage's changelog topic, and
    /// a partition's state is restored from it before its first record
    /// runs after a restart or a rebalance. docs/design/state.md#durable.
    pub fn by_input_partition(mut self) -> KeyedStream<K, T> {
        self.by_input_partition = true;
        self
    }

    /// A rolling aggregate per key: the first record of a key is its
    /// value, each later one `f(&value, record)`. Emits the updated value
    /// after every record. Records apply in their input partition's order
    /// on any number of workers (docs/design/state.md#order): a key read
    /// from one partition gets the same values run after run, even when
    /// `f` is not commutative.
    pub fn reduce(
        self,
        name: impl Into<String>,
        f: impl Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
    ) -> Stream<T> {
        self.reduce_with(name.into(), f, None)
    }

    /// [`reduce`](Self::reduce) with a function that is associative:
    /// `f(f(a, b), c)` equals `f(a, f(b, c))`, as a sum, a count, a max or
    /// "keep the later" are. On Kafka, the records of a key bound for the
    /// repartition topic are then combined with `f` first, within each
    /// batch of the sink thread (a tick's worth or more): the topic, and
    /// the stage, see one record per key and batch instead of every one,
    /// and the stage emits one value per combined record. The final value
    /// of every key is the same; the values in between skip what was
    /// combined (a count goes 3, 7, 12 rather than 1, 2, 3, ...), so use
    /// it where a reader wants each key's latest value, not every step.
    /// A pair the function refuses (fails or panics on) is written apart,
    /// and the stage applies each as it applies any record. Without a
    /// repartition (elsewhere than Kafka, or
    /// [`by_input_partition`](Self::by_input_partition)) it is `reduce`.
    /// docs/design/state.md#combining.
    pub fn reduce_combined(
        self,
        name: impl Into<String>,
        f: impl Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
    ) -> Stream<T> {
        let f = Arc::new(f);
        let combiner: Arc<dyn Combiner> = Arc::new(Combine {
            f: f.clone(),
            encode: try_encode_json::<T>,
        });
        self.reduce_with(
            name.into(),
            move |value, record| f(value, record),
            Some(combiner),
        )
    }

    fn reduce_with(
        self,
        name: String,
        f: impl Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
        combiner: Option<Arc<dyn Combiner>>,
    ) -> Stream<T> {
        let stream = Self::keyed_input(
            self.stream,
            &name,
            &self.key,
            self.by_input_partition,
            combiner,
        );
        let (key, by_input_partition) = (self.key, self.by_input_partition);
        stream.then(move |next, parts| {
            let durable = Durable {
                name: name.clone(),
                codec: Codec::json(),
                topic: OnceLock::new(),
                by_input_partition,
            };
            let node = InOrder::build(
                parts,
                Reduce {
                    name,
                    key,
                    f,
                    state: KeyedState::default(),
                    durable,
                    next,
                },
            );
            parts.stateful.push(node.clone());
            node
        })
    }

    /// Tumbling event-time windows: see [`Tumbling`] and
    /// [`WindowedStream::reduce`].
    pub fn window(
        self,
        windows: Tumbling,
        event_time_ms: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: self,
            windows,
            time: Arc::new(event_time_ms),
        }
    }
}

struct Reduce<K, T, F> {
    name: String,
    key: KeyFn<K, T>,
    f: F,
    /// The values by key, for the whole job, when the stage reads a job
    /// run as one without `by_input_partition`; otherwise the values are
    /// kept per partition, in the partitions' lanes ([`Durable::per_partition`]).
    state: KeyedState<K, T>,
    durable: Durable<K, T>,
    next: NodeRef<T>,
}

/// A keyed stage's changelog, and how its state is kept.
pub(crate) struct Durable<K, T> {
    name: String,
    codec: Codec<K, T>,
    /// Set when the job runs on Kafka (`Job::attach_topics`).
    topic: OnceLock<Arc<str>>,
    by_input_partition: bool,
}

impl<K, T> Durable<K, T> {
    /// Whether the state is kept per partition of what the stage reads:
    /// the input declared keyed by the key, or a repartition topic (a job
    /// on Kafka, whose stages all have changelogs).
    fn per_partition(&self) -> bool {
        self.by_input_partition || self.topic.get().is_some()
    }
}

impl<K, T, F> Step<T> for Reduce<K, T, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    F: Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
{
    /// The partition's values by key, when the state is kept per input
    /// partition; otherwise empty, and the values are the stage's
    /// (`state`).
    type Lane = KeyMap<K, T>;
    type Then = Result<T, Rejected>;

    fn lane(&self) -> KeyMap<K, T> {
        KeyMap::default()
    }

    fn apply(&self, lane: &mut KeyMap<K, T>, _: i32, record: T, out: &Outlet) -> Self::Then {
        let key = (self.key)(&record);
        let reduce = |value: Option<&T>| match value {
            Some(value) => (self.f)(value, record),
            None => Ok(record),
        };
        let durable = &self.durable;
        if !durable.per_partition() {
            return self.state.update(key, reduce);
        }
        let topic = durable.topic.get();
        let logged_key = topic.map(|_| (durable.codec.encode_key)(&key));
        let new = match lane.entry(key) {
            Entry::Occupied(mut e) => {
                let new = reduce(Some(e.get()))?;
                e.insert(new.clone());
                new
            }
            Entry::Vacant(e) => e.insert(reduce(None)?).clone(),
        };
        if let (Some(topic), Some(key)) = (topic, logged_key) {
            // Sent under the partition's lock: the changelog gets each
            // partition's updates in the order they applied.
            out.changelog(topic, key, Some((durable.codec.encode_value)(&new)));
        }
        Ok(new)
    }

    fn changelog(&self) -> Option<(&str, &OnceLock<Arc<str>>)> {
        Some((self.durable.name.as_str(), &self.durable.topic))
    }

    /// Sized once for the whole changelog: growing step by step would
    /// copy the map each time it doubles, and touch fresh memory for
    /// every copy. A changelog not compacted yet holds more records than
    /// keys, so the room is capped, and given back once restored if most
    /// of it stayed empty.
    fn reserve(&self, lane: &mut KeyMap<K, T>, records: u64) {
        lane.reserve(room_for::<K, T>(records));
    }

    fn restored(&self, lane: &mut KeyMap<K, T>) {
        if lane.capacity() > 4 * lane.len() {
            lane.shrink_to_fit();
        }
    }

    fn restore(
        &self,
        lane: &mut KeyMap<K, T>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let codec = &self.durable.codec;
        let key = (codec.decode_key)(key).map_err(|e| format!("its key: {e}"))?;
        match value {
            Some(value) => {
                let value = (codec.decode_value)(value).map_err(|e| format!("its value: {e}"))?;
                lane.insert(key, value);
            }
            None => {
                lane.remove(&key);
            }
        }
        Ok(())
    }

    fn then(&self, updated: Result<T, Rejected>, out: Outlet, exec: &mut Exec<'_, '_>) {
        match updated {
            Ok(value) => forward(&self.next, value, out, exec),
            Err(e) => out.reject(stage_error(&self.name, e).0),
        }
    }
}

/// The repartition before a keyed stage whose input is not declared keyed
/// by its key (`key_by` without `by_input_partition`). On Kafka it writes
/// each record to the repartition topic under its key, which ends the
/// record's run in this segment; the next segment reads the topic
/// ([`Rekeyed`]). Elsewhere it hands the record straight on.
struct Repartition<K, T> {
    stage: String,
    key: KeyFn<K, T>,
    codec: Codec<K, T>,
    topic: OnceLock<Arc<str>>,
    /// With `reduce_combined`: the records go to the sink thread as they
    /// are, to be combined there.
    combiner: Option<Arc<dyn Combiner>>,
    next: NodeRef<T>,
}

impl<K, T> Node<T> for Repartition<K, T>
where
    K: Send + Sync + 'static,
    T: Send + 'static,
{
    fn push(&self, record: T, out: Outlet, exec: &mut Exec<'_, '_>) {
        let Some(topic) = self.topic.get() else {
            return forward(&self.next, record, out, exec);
        };
        let key = (self.codec.encode_key)(&(self.key)(&record));
        match &self.combiner {
            Some(combiner) => out.repartition_combined(topic, key, Box::new(record), combiner),
            None => out.repartition(topic, key, (self.codec.encode_value)(&record)),
        }
    }

    /// A write to the sink thread, or a hand-over: cheap.
    fn inline(&self) -> bool {
        true
    }
}

impl<K, T> Boundary for Repartition<K, T>
where
    K: Send + Sync + 'static,
    T: Send + 'static,
{
    fn stage(&self) -> &str {
        &self.stage
    }

    fn topic(&self) -> &OnceLock<Arc<str>> {
        &self.topic
    }
}

/// The combining side of `reduce_combined`: the stage's own function,
/// run on the sink thread over records of one key.
struct Combine<T, F> {
    f: Arc<F>,
    encode: fn(&T) -> Result<Vec<u8>, String>,
}

impl<T, F> Combiner for Combine<T, F>
where
    T: Clone + Send + 'static,
    F: Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
{
    fn combine(
        &self,
        held: &mut Box<dyn Any + Send>,
        next: Box<dyn Any + Send>,
    ) -> Result<(), Box<dyn Any + Send>> {
        let (Some(value), Some(record)) = (held.downcast_ref::<T>(), next.downcast_ref::<T>())
        else {
            return Err(next);
        };
        // The function takes the record: a copy keeps it for when the
        // function fails or panics. A panic is the job's, and stays off
        // the sink thread.
        let combined =
            std::panic::catch_unwind(AssertUnwindSafe(|| (self.f)(value, record.clone())));
        match combined {
            Ok(Ok(combined)) => {
                *held = Box::new(combined);
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Err(next),
        }
    }

    fn encode(&self, value: &(dyn Any + Send)) -> Result<Vec<u8>, String> {
        let value = value
            .downcast_ref::<T>()
            .ok_or("a combined record is not of its stage's type")?;
        std::panic::catch_unwind(AssertUnwindSafe(|| (self.encode)(value)))
            .unwrap_or_else(|_| Err("its serialization panicked".to_owned()))
            .map_err(|e| format!("the job's record does not serialize as JSON: {e}"))
    }
}

/// Where a repartition topic's records enter the segment that reads it:
/// each is decoded back into the job's record, and goes on to the keyed
/// stage in its first task.
struct Rekeyed<T> {
    decode: fn(&[u8]) -> Result<T, String>,
    next: NodeRef<T>,
}

impl<T: Send + 'static> Node<Input> for Rekeyed<T> {
    fn push(&self, input: Input, out: Outlet, exec: &mut Exec<'_, '_>) {
        match (self.decode)(input.payload()) {
            Ok(record) => {
                drop(input);
                self.next.push(record, out, exec)
            }
            Err(e) => out.reject(format!(
                "a record of the repartition topic does not decode as the job's record: {e}"
            )),
        }
    }
}

/// Tumbling event-time windows of a fixed size, aligned to the epoch.
///
/// Each input partition has its own watermark: the highest event time
/// seen in it, less the allowed out-of-orderness. A window [start, end)
/// closes when its partition's watermark reaches `end`, and then emits one
/// result per key. A record whose window has already closed is late: it
/// goes to the dead-letter destination with the reason. Records reach the
/// windows in their partition's input order, so the out-of-orderness need
/// cover only the input's own disorder (docs/design/state.md#windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    size_ms: i64,
    out_of_orderness_ms: i64,
}

impl Tumbling {
    /// Windows of `size`, with no out-of-orderness allowed.
    ///
    /// # Panics
    ///
    /// If `size` is under a millisecond.
    pub fn of(size: Duration) -> Tumbling {
        let size_ms = i64::try_from(size.as_millis()).unwrap_or(i64::MAX);
        assert!(size_ms > 0, "a window lasts at least a millisecond");
        Tumbling {
            size_ms,
            out_of_orderness_ms: 0,
        }
    }

    /// How far behind the highest event time seen a record may still be.
    pub fn out_of_orderness(mut self, bound: Duration) -> Tumbling {
        self.out_of_orderness_ms = i64::try_from(bound.as_millis()).unwrap_or(i64::MAX);
        self
    }
}

/// The result of one key in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windowed<K, T> {
    pub key: K,
    /// The window's start, in milliseconds, inclusive.
    pub start: i64,
    /// Its end, exclusive.
    pub end: i64,
    pub value: T,
}

/// A keyed stream cut into windows.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    windows: Tumbling,
    time: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
}

impl<K, T> WindowedStream<K, T>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reduces each key's records within each window, as
    /// [`KeyedStream::reduce`] does, and emits one [`Windowed`] per key
    /// and window when the window closes. The end of a bounded input
    /// (stdin, generate) closes every window.
    pub fn reduce(
        self,
        name: impl Into<String>,
        f: impl Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
    ) -> Stream<Windowed<K, T>> {
        let name = name.into();
        let WindowedStream {
            keyed,
            windows,
            time,
        } = self;
        let stream = KeyedStream::keyed_input(
            keyed.stream,
            &name,
            &keyed.key,
            keyed.by_input_partition,
            None,
        );
        let (key, by_input_partition) = (keyed.key, keyed.by_input_partition);
        stream.then(move |next, parts| {
            let durable = Durable {
                name: name.clone(),
                codec: Codec::json(),
                topic: OnceLock::new(),
                by_input_partition,
            };
            let node = InOrder::build(
                parts,
                WindowReduce {
                    name,
                    key,
                    time,
                    f,
                    windows,
                    durable,
                    next,
                },
            );
            parts.finishers.push(node.clone());
            parts.stateful.push(node.clone());
            node
        })
    }
}

/// One partition's open windows.
struct Pane<K, T> {
    max_time: i64,
    /// By window start.
    open: Windows<K, T>,
}

impl<K, T> Pane<K, T> {
    fn watermark(&self, windows: &Tumbling) -> i64 {
        self.max_time.saturating_sub(windows.out_of_orderness_ms)
    }

    /// Takes the windows that end at or before `watermark`.
    fn close_until(&mut self, watermark: i64, windows: &Tumbling) -> Windows<K, T> {
        let still_open = self
            .open
            .split_off(&watermark.saturating_sub(windows.size_ms).saturating_add(1));
        std::mem::replace(&mut self.open, still_open)
    }
}

struct WindowReduce<K, T, F> {
    name: String,
    key: KeyFn<K, T>,
    time: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    f: F,
    windows: Tumbling,
    /// Its changelog, once attached: a key's value in a window is written
    /// under `[start, key]`, deleted (a tombstone) when the window closes;
    /// the partition's highest event time under [`MAX_TIME_KEY`].
    durable: Durable<K, T>,
    next: NodeRef<Windowed<K, T>>,
}

/// The changelog key of a partition's highest event time seen, at a window
/// stage: a JSON string, where a window's keys are JSON arrays.
const MAX_TIME_KEY: &[u8] = b"\"max_time\"";

/// What a record did at a window stage.
enum WindowThen<K, T> {
    /// Windows it closed, to emit (often none).
    Closed(Windows<K, T>),
    /// It was late, or the reduce function failed: the reason.
    Rejected(Rejected),
}

impl<K, T, F> Step<T> for WindowReduce<K, T, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    F: Fn(&T, T) -> Result<T, Rejected> + Send + Sync + 'static,
{
    type Lane = Pane<K, T>;
    type Then = WindowThen<K, T>;

    fn lane(&self) -> Pane<K, T> {
        Pane {
            max_time: i64::MIN,
            open: BTreeMap::new(),
        }
    }

    /// Lateness, the update and closing windows happen under the
    /// partition's lock: no record can join a window once it has closed.
    fn apply(&self, pane: &mut Pane<K, T>, partition: i32, record: T, out: &Outlet) -> Self::Then {
        let w = &self.windows;
        let time = (self.time)(&record);
        let key = (self.key)(&record);
        let start = time.div_euclid(w.size_ms) * w.size_ms;
        let watermark = pane.watermark(w);
        if start.saturating_add(w.size_ms) <= watermark {
            return WindowThen::Rejected(Rejected(format!(
                "late: event time {time} ms is in window [{start}, {}) ms, closed at watermark {watermark} ms of partition {partition}",
                start + w.size_ms
            )));
        }
        let d = &self.durable;
        let log = d.topic.get().map(|topic| (topic, &d.codec, key.clone()));
        let window = pane.open.entry(start).or_default();
        let updated = match window.entry(key) {
            Entry::Occupied(mut e) => (self.f)(e.get(), record).map(|v| {
                e.insert(v);
            }),
            Entry::Vacant(e) => {
                e.insert(record);
                Ok(())
            }
        };
        if let Err(e) = updated {
            return WindowThen::Rejected(e);
        }
        let moved = time > pane.max_time;
        pane.max_time = pane.max_time.max(time);
        let watermark = pane.watermark(w);
        let closed = pane.close_until(watermark, w);
        if let Some((topic, codec, key)) = log {
            // Under the partition's lock, in the order applied. A window
            // that closed here is deleted, this record's own included.
            if let Some(value) = pane.open.get(&start).and_then(|window| window.get(&key)) {
                let value = (codec.encode_value)(value);
                out.changelog(topic, (codec.encode_window_key)(start, &key), Some(value));
            }
            if moved {
                let max_time = encode_json(&pane.max_time);
                out.changelog(topic, MAX_TIME_KEY.to_vec(), Some(max_time));
            }
            for (start, keys) in &closed {
                for k in keys.keys() {
                    out.changelog(topic, (codec.encode_window_key)(*start, k), None);
                }
            }
        }
        WindowThen::Closed(closed)
    }

    fn then(&self, then: Self::Then, out: Outlet, exec: &mut Exec<'_, '_>) {
        let closed = match then {
            WindowThen::Closed(closed) => closed,
            WindowThen::Rejected(e) => return out.reject(stage_error(&self.name, e).0),
        };
        for (start, results) in closed {
            for (key, value) in results {
                let result = Windowed {
                    key,
                    start,
                    end: start + self.windows.size_ms,
                    value,
                };
                forward(&self.next, result, out.clone(), exec);
            }
        }
    }

    /// Every open window, at the end of a bounded input.
    fn close(&self, pane: &mut Pane<K, T>) -> Option<Self::Then> {
        Some(WindowThen::Closed(std::mem::take(&mut pane.open)))
    }

    fn changelog(&self) -> Option<(&str, &OnceLock<Arc<str>>)> {
        Some((self.durable.name.as_str(), &self.durable.topic))
    }

    fn restore(
        &self,
        pane: &mut Pane<K, T>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let codec = &self.durable.codec;
        if key == MAX_TIME_KEY {
            if let Some(value) = value {
                pane.max_time =
                    decode_json(value).map_err(|e| format!("its highest event time: {e}"))?;
            }
            return Ok(());
        }
        let (start, key) =
            (codec.decode_window_key)(key).map_err(|e| format!("its window and key: {e}"))?;
        match value {
            Some(value) => {
                let value = (codec.decode_value)(value).map_err(|e| format!("its value: {e}"))?;
                pane.open.entry(start).or_default().insert(key, value);
            }
            None => {
                if let Some(window) = pane.open.get_mut(&start) {
                    window.remove(&key);
                    if window.is_empty() {
                        pane.open.remove(&start);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The combining side of `reduce_combined` folds with the stage's
    /// function, and gives the later record back, whole, when the
    /// function fails or panics, so that nothing is lost on the sink
    /// thread.
    #[test]
    fn a_combine_that_fails_or_panics_gives_the_record_back() {
        let f = |(w, n): &(String, u64), (_, m): (String, u64)| match m {
            0 => Err(Rejected::new("no zeros")),
            7 => panic!("a bug"),
            m => Ok((w.clone(), n + m)),
        };
        let combine = Combine {
            f: Arc::new(f),
            encode: try_encode_json::<(String, u64)>,
        };
        let record = |m: u64| -> Box<dyn Any + Send> { Box::new(("a".to_owned(), m)) };
        let mut held = record(1);
        assert!(combine.combine(&mut held, record(2)).is_ok());
        let refused = combine.combine(&mut held, record(0)).unwrap_err();
        assert_eq!(refused.downcast_ref(), Some(&("a".to_owned(), 0u64)));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let panicked = combine.combine(&mut held, record(7));
        std::panic::set_hook(hook);
        assert_eq!(
            panicked.unwrap_err().downcast_ref(),
            Some(&("a".to_owned(), 7u64))
        );
        assert_eq!(combine.encode(&*held).unwrap(), br#"["a",3]"#);
    }

    /// A restore makes room for every record of a small changelog, and
    /// for a huge one makes a table of at most RESERVE_BYTES.
    #[test]
    fn a_restores_room_is_its_records_up_to_the_cap() {
        fn table_bytes<K, T>(map: &KeyMap<K, T>) -> usize {
            // Slots: capacity is 7/8 of them (large maps).
            map.capacity() / 7 * 8 * (std::mem::size_of::<(K, T)>() + 1)
        }
        let mut small = KeyMap::<String, u64>::default();
        small.reserve(room_for::<String, u64>(1_000_000));
        assert!(small.capacity() >= 1_000_000);
        assert!(table_bytes(&small) <= RESERVE_BYTES);

        for records in [50_000_000, u64::MAX] {
            let mut wide = KeyMap::<String, [u8; 200]>::default();
            wide.reserve(room_for::<String, [u8; 200]>(records));
            assert!(wide.capacity() >= room_for::<String, [u8; 200]>(records));
            assert!(
                table_bytes(&wide) <= RESERVE_BYTES,
                "{records} records: {} bytes",
                table_bytes(&wide)
            );
            assert!(table_bytes(&wide) > RESERVE_BYTES / 4);
        }
    }

    /// Many threads add to few keys at once: a lost update would leave a
    /// total short, and would make two updates see the same old value.
    #[test]
    fn concurrent_updates_of_one_key_are_never_lost() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 20_000;
        const KEYS: u64 = 3;
        let state = Arc::new(KeyedState::<u64, u64>::default());
        let seen: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let state = &state;
                    s.spawn(move || {
                        (0..PER_THREAD)
                            .map(|i| {
                                let key = (t + i) % KEYS;
                                let new = state
                                    .update(key, |v| Ok::<_, ()>(v.copied().unwrap_or(0) + 1))
                                    .unwrap();
                                (key, new)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: u64 = (0..KEYS).map(|k| state.get(&k).unwrap()).sum();
        assert_eq!(total, THREADS * PER_THREAD);
        // Every value from 1 to the final count was returned exactly once
        // per key: no two updates read the same value.
        for key in 0..KEYS {
            let mut values: Vec<u64> = seen
                .iter()
                .flatten()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .collect();
            values.sort_unstable();
            let expected: Vec<u64> = (1..=state.get(&key).unwrap()).collect();
            assert_eq!(values, expected, "key {key}");
        }
    }

    #[test]
    fn a_failed_or_panicking_update_leaves_the_value_as_it_was() {
        let state = KeyedState::<&str, u64>::default();
        assert_eq!(state.update("a", |_| Ok::<_, ()>(5)), Ok(5));
        assert_eq!(state.update("a", |_| Err("no")), Err("no"));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            state.update("a", |_| -> Result<u64, ()> { panic!("bug") })
        }));
        std::panic::set_hook(hook);
        assert!(panicked.is_err());
        // The lock was released on unwinding, and the value kept.
        assert_eq!(state.update("a", |v| Ok::<_, ()>(v.unwrap() + 1)), Ok(6));
        assert_eq!((state.get(&"a"), state.len()), (Some(6), 1));
    }
}
