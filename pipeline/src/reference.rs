//! The reference job (docs/design/measurement.md, "The reference
//! workload"): five `map` stages, stage k computing the naive recursive
//! Fibonacci of the record's field `stagek`.

use serde::{Deserialize, Serialize};

use crate::dataflow::{Job, Rejected, Stream};

/// Number of stages, and of `stageK` / `fibK` fields.
pub const STAGES: usize = 5;

/// The stage values of the reference message.
pub const DEFAULT_STAGES: [u32; STAGES] = [10, 20, 30, 20, 10];

/// Messages in a burst, generated (`fila run`) or produced (`fila load`),
/// unless told otherwise.
pub const DEFAULT_BURST: u64 = 10_000;

/// The largest stage value accepted by default (`--max-stage`). fib(45)
/// already takes seconds; a record asking for more is rejected as bad
/// input, not left to run away.
pub const MAX_STAGE: u32 = 45;

/// A reference record, as read and as written. The output adds `fib1` to
/// `fib5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FibRecord {
    pub id: u64,
    pub stage1: u32,
    pub stage2: u32,
    pub stage3: u32,
    pub stage4: u32,
    pub stage5: u32,
    /// Milliseconds since the Unix epoch, set by the producer.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib1: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib2: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib3: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib4: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib5: Option<u64>,
}

impl FibRecord {
    /// A fresh input record.
    pub fn new(id: u64, stages: [u32; STAGES], timestamp: u64) -> FibRecord {
        let [stage1, stage2, stage3, stage4, stage5] = stages;
        FibRecord {
            id,
            stage1,
            stage2,
            stage3,
            stage4,
            stage5,
            timestamp,
            fib1: None,
            fib2: None,
            fib3: None,
            fib4: None,
            fib5: None,
        }
    }

    pub fn stages(&self) -> [u32; STAGES] {
        [
            self.stage1,
            self.stage2,
            self.stage3,
            self.stage4,
            self.stage5,
        ]
    }

    pub fn fibs(&self) -> [Option<u64>; STAGES] {
        [self.fib1, self.fib2, self.fib3, self.fib4, self.fib5]
    }

    fn fib_mut(&mut self, k: usize) -> &mut Option<u64> {
        match k {
            0 => &mut self.fib1,
            1 => &mut self.fib2,
            2 => &mut self.fib3,
            3 => &mut self.fib4,
            4 => &mut self.fib5,
            _ => unreachable!("the reference job has {STAGES} stages"),
        }
    }
}

/// Naive recursive Fibonacci: the CPU-heavy work of the reference job.
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Decodes and checks one input record: every stage value at most
/// `max_stage`.
pub fn decode(payload: &[u8], max_stage: u32) -> Result<FibRecord, Rejected> {
    let record: FibRecord = serde_json::from_slice(payload)
        .map_err(|e| Rejected(format!("not a reference record: {e}")))?;
    for (k, n) in record.stages().into_iter().enumerate() {
        if n > max_stage {
            return Err(Rejected(format!(
                "stage{} = {n} is above the maximum {max_stage} (--max-stage)",
                k + 1
            )));
        }
    }
    Ok(record)
}

pub fn encode(record: &FibRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a FibRecord always serializes")
}

/// The reference job, with the default cap [`MAX_STAGE`].
pub fn job() -> Job {
    job_with_max_stage(MAX_STAGE)
}

/// The reference job: a record with a stage value above `max_stage` is
/// dead-lettered as bad input.
pub fn job_with_max_stage(max_stage: u32) -> Job {
    stages(max_stage).sink(encode)
}

/// The reference job without its sink, for jobs that add to it (the
/// benches measure keyed state on it).
pub fn stages(max_stage: u32) -> Stream<FibRecord> {
    let records = Job::new("fibonacci").decode(move |input| decode(input.payload(), max_stage));
    (0..STAGES).fold(records, |records, k| {
        records.map(format!("fib{}", k + 1), move |mut record: FibRecord| {
            let n = record.stages()[k];
            *record.fib_mut(k) = Some(fib(std::hint::black_box(n)));
            Ok(record)
        })
    })
}

/// One reference input message, as bytes.
pub fn message(id: u64, stages: [u32; STAGES], timestamp_ms: u64) -> Vec<u8> {
    encode(&FibRecord::new(id, stages, timestamp_ms))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The five stage values of a reference message, as `--stages` writes
/// them: `10,20,30,20,10`. Whether they are below the cap is for the job to
/// say (`check_stages`), since the cap is a flag of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stages(pub [u32; STAGES]);

impl std::str::FromStr for Stages {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values: Vec<u32> = s
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{v}` is not a whole number"))
            })
            .collect::<Result<_, _>>()?;
        let values: [u32; STAGES] = values.try_into().map_err(|v: Vec<u32>| {
            format!("expected {STAGES} comma-separated values, got {}", v.len())
        })?;
        Ok(Stages(values))
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e] = self.0;
        write!(f, "{a},{b},{c},{d},{e}")
    }
}

/// Checks `--stages` against the cap `max_stage`.
pub fn check_stages(stages: [u32; STAGES], max_stage: u32) -> Result<(), String> {
    match stages.iter().find(|&&n| n > max_stage) {
        Some(too_big) => Err(format!(
            "stage value {too_big} is above the maximum {max_stage} (--max-stage)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_matches_known_values() {
        assert_eq!(
            [fib(0), fib(1), fib(2), fib(10), fib(20), fib(30)],
            [0, 1, 1, 55, 6765, 832040]
        );
    }

    #[test]
    fn job_fills_every_fib_field_and_keeps_id_and_timestamp() {
        let out = job()
            .run_inline(&message(7, [10, 20, 30, 20, 10], 1732000000000))
            .unwrap();
        assert_eq!(out.len(), 1);
        let record: FibRecord = serde_json::from_slice(&out[0]).unwrap();
        assert_eq!((record.id, record.timestamp), (7, 1732000000000));
        assert_eq!(
            record.fibs(),
            [Some(55), Some(6765), Some(832040), Some(6765), Some(55)]
        );
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason() {
        let job = job();
        let not_json = job.run_inline(b"{oops").unwrap_err();
        assert!(not_json.0.contains("not a reference record"), "{not_json}");
        let missing = job
            .run_inline(br#"{"id":1,"stage1":1,"stage2":1,"stage3":1,"stage4":1,"timestamp":0}"#);
        assert!(missing.unwrap_err().0.contains("missing field `stage5`"));
        let wrong_type = job.run_inline(
            br#"{"id":"x","stage1":1,"stage2":1,"stage3":1,"stage4":1,"stage5":1,"timestamp":0}"#,
        );
        assert!(wrong_type.unwrap_err().0.contains("invalid type"));
        let too_big = job.run_inline(
            br#"{"id":1,"stage1":1,"stage2":1,"stage3":99,"stage4":1,"stage5":1,"timestamp":0}"#,
        );
        assert!(too_big.unwrap_err().0.contains("stage3 = 99"));
    }

    #[test]
    fn stages_flag_needs_five_small_numbers() {
        assert_eq!("10,20,30,20,10".parse(), Ok(Stages([10, 20, 30, 20, 10])));
        assert!("1,2,3"
            .parse::<Stages>()
            .unwrap_err()
            .contains("expected 5"));
        assert!("1,2,x,4,5".parse::<Stages>().unwrap_err().contains("`x`"));
        assert_eq!(Stages(DEFAULT_STAGES).to_string(), "10,20,30,20,10");
        assert!(check_stages([1, 2, 3, 4, 50], MAX_STAGE)
            .unwrap_err()
            .contains("maximum 45"));
        assert_eq!(check_stages([1, 2, 3, 4, 50], 50), Ok(()));
    }

    #[test]
    fn the_stage_cap_is_the_jobs_and_names_itself() {
        let record = message(1, [1, 2, 46, 2, 1], 0);
        let rejected = job().run_inline(&record).unwrap_err();
        assert!(
            rejected.0.contains("stage3 = 46 is above the maximum 45"),
            "{rejected}"
        );
        let out = job_with_max_stage(46).run_inline(&record).unwrap();
        let out: FibRecord = serde_json::from_slice(&out[0]).unwrap();
        assert_eq!(out.fib3, Some(fib(46)));
        let tighter = job_with_max_stage(2).run_inline(&record).unwrap_err();
        assert!(
            tighter.0.contains("stage3 = 46 is above the maximum 2"),
            "{tighter}"
        );
    }
}
