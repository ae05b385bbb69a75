//! The dataflow API: a job is a decoder, a sequence of named stages over a
//! record type, and an encoder. Each stage runs as its own task on the
//! runtime, so any worker can run any stage, and a record's next stage is
//! scheduled depth first on the worker that ran the previous one.
//!
//! Only `map` exists today. A stage is an [`Op`], so `filter`, `flat_map`
//! and keyed stages can be added as new variants: each decides how many
//! follow-on tasks (zero, one, many) a record produces.

use std::sync::Arc;

use fila_runtime::TaskCx;

/// A record was rejected: it goes to the dead-letter destination with this
/// reason, and its position still counts as handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

type MapFn<R> = dyn Fn(R) -> Result<R, Rejected> + Send + Sync;
type DecodeFn<R> = dyn Fn(&[u8]) -> Result<R, Rejected> + Send + Sync;
type EncodeFn<R> = dyn Fn(&R) -> Vec<u8> + Send + Sync;

/// What a stage does to one record.
pub enum Op<R> {
    /// One record in, one record out (or a rejection).
    Map(Box<MapFn<R>>),
}

pub struct Stage<R> {
    pub name: String,
    pub op: Op<R>,
}

/// A complete job: bytes in, stages, bytes out.
pub struct Job<R> {
    name: String,
    decode: Box<DecodeFn<R>>,
    stages: Vec<Stage<R>>,
    encode: Box<EncodeFn<R>>,
}

impl<R: Send + 'static> Job<R> {
    /// A job with no stages yet: records are decoded and re-encoded.
    pub fn new(
        name: impl Into<String>,
        decode: impl Fn(&[u8]) -> Result<R, Rejected> + Send + Sync + 'static,
        encode: impl Fn(&R) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        Job {
            name: name.into(),
            decode: Box::new(decode),
            stages: Vec::new(),
            encode: Box::new(encode),
        }
    }

    /// Appends a `map` stage.
    pub fn map(
        mut self,
        name: impl Into<String>,
        f: impl Fn(R) -> Result<R, Rejected> + Send + Sync + 'static,
    ) -> Self {
        self.stages.push(Stage {
            name: name.into(),
            op: Op::Map(Box::new(f)),
        });
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stages(&self) -> &[Stage<R>] {
        &self.stages
    }

    /// Runs the whole job on one record on the calling thread, with no
    /// scheduler: what a plain thread does in calibration, and a reference
    /// for tests.
    pub fn run_inline(&self, payload: &[u8]) -> Result<Vec<u8>, Rejected> {
        let mut record = (self.decode)(payload)?;
        for stage in &self.stages {
            record = stage.apply(record)?;
        }
        Ok((self.encode)(&record))
    }
}

impl<R> Stage<R> {
    fn apply(&self, record: R) -> Result<R, Rejected> {
        match &self.op {
            Op::Map(f) => f(record).map_err(|e| Rejected(format!("stage {}: {}", self.name, e.0))),
        }
    }
}

/// Where a record's results go: called on a worker, so it must be cheap.
pub trait Outlet: Send + 'static {
    fn output(self, payload: Vec<u8>);
    fn reject(self, reason: Rejected);
}

/// The first task of a record: decode, then stage 0.
pub fn start<R: Send + 'static, O: Outlet>(
    job: Arc<Job<R>>,
    payload: Arc<[u8]>,
    outlet: O,
) -> impl FnOnce(&mut TaskCx<'_>) + Send + 'static {
    move |cx| match (job.decode)(&payload) {
        Ok(record) => {
            drop(payload);
            run_stage(job, 0, record, outlet, cx)
        }
        Err(reason) => outlet.reject(reason),
    }
}

fn run_stage<R: Send + 'static, O: Outlet>(
    job: Arc<Job<R>>,
    k: usize,
    record: R,
    outlet: O,
    cx: &mut TaskCx<'_>,
) {
    let Some(stage) = job.stages.get(k) else {
        let bytes = (job.encode)(&record);
        return outlet.output(bytes);
    };
    match stage.apply(record) {
        Ok(record) if k + 1 == job.stages.len() => {
            let bytes = (job.encode)(&record);
            outlet.output(bytes);
        }
        // The next stage is a task of its own: it goes to this worker's
        // deque and runs next here, unless an idle worker steals it.
        Ok(record) => cx.spawn(move |cx| run_stage(job, k + 1, record, outlet, cx)),
        Err(reason) => outlet.reject(reason),
    }
}
