//! Each operator of the dataflow API through the real driver and runtime,
//! with exact results on known input.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fila_connectors::Envelope;
use fila_pipeline::dataflow::{Job, Rejected};
use fila_pipeline::driver::{Driver, RunSummary};
use fila_pipeline::state::{Tumbling, Windowed};
use fila_runtime::{Runtime, Workers};
use std::sync::Arc;
use support::{lines, record, Collect, DeadLetter, Output, Records};

struct Run {
    outputs: Vec<Output>,
    dead: Vec<DeadLetter>,
    summary: RunSummary,
    max_in_flight: usize,
}

impl Run {
    fn payloads(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.1.clone()).collect()
    }

    fn sorted(&self) -> Vec<String> {
        let mut p = self.payloads();
        p.sort();
        p
    }
}

fn run(job: Job, input: Vec<Envelope>, workers: usize, window: usize, ordered: bool) -> Run {
    let rt = Runtime::builder()
        .workers(Workers::Count(workers.try_into().unwrap()))
        .pin(false)
        .window(window)
        .build()
        .unwrap();
    let sink = Collect::default();
    let n = input.len();
    let (mut source, acks, _) = Records::committing(input, 0);
    let summary = Driver::new()
        .ordered(ordered)
        .run(&rt, Arc::new(job), &mut source, Box::new(sink.clone()))
        .unwrap();
    assert_eq!(summary.messages, n as u64, "every record finished once");
    assert_eq!(acks.outstanding(), 0, "every position is acknowledged");
    let max_in_flight = rt.shutdown().max_in_flight;
    let outputs = sink.outputs.lock().unwrap().clone();
    let dead = sink.dead.lock().unwrap().clone();
    Run {
        outputs,
        dead,
        summary,
        max_in_flight,
    }
}

fn number(input: &fila_pipeline::dataflow::Input) -> Result<i64, Rejected> {
    std::str::from_utf8(input.payload())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Rejected::new("not a number"))
}

#[test]
fn map_changes_the_type_and_filter_drops_records_without_output() {
    let job = Job::new("evens")
        .decode(number)
        .filter("even", |n: &i64| Ok(n % 2 == 0))
        .map("describe", |n: i64| Ok(format!("{n} is even")))
        .map("length", |s: String| Ok((s.len(), s)))
        .sink(|(len, s): &(usize, String)| format!("{s}/{len}").into_bytes());
    let input = lines(&["1", "2", "3", "4", "x", "10"]);
    let r = run(job, input, 2, 4, false);
    assert_eq!(r.sorted(), ["10 is even/10", "2 is even/9", "4 is even/9"]);
    assert_eq!(r.dead.len(), 1);
    assert_eq!(r.dead[0].1, "x");
    assert_eq!(r.dead[0].2, "not a number");
    assert_eq!((r.summary.outputs, r.summary.dead_letters), (3, 1));
}

#[test]
fn a_stage_error_names_the_stage_and_dead_letters_the_input_unchanged() {
    let job = Job::new("picky")
        .decode(number)
        .map("no sevens", |n: i64| {
            if n == 7 {
                Err(Rejected::new("seven"))
            } else {
                Ok(n)
            }
        })
        .filter("small", |n: &i64| {
            if *n > 100 {
                Err(Rejected::new(format!("{n} is too big")))
            } else {
                Ok(true)
            }
        })
        .sink(|n: &i64| n.to_string().into_bytes());
    let r = run(job, lines(&["6", "7", "8", "101"]), 2, 4, false);
    assert_eq!(r.sorted(), ["6", "8"]);
    let mut dead: Vec<(i64, String, String)> = r
        .dead
        .iter()
        .map(|d| (d.0.offset, d.1.clone(), d.2.clone()))
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            (1, "7".into(), "stage no sevens: seven".into()),
            (3, "101".into(), "stage small: 101 is too big".into())
        ]
    );
}

/// Each record n becomes n outputs, all within the record's one window
/// slot: with a window of 1, never more than one record is in flight, and
/// the record is acknowledged once, after all its outputs.
#[test]
fn flat_map_outputs_count_against_the_window_through_their_parent() {
    let job = Job::new("fan out")
        .decode(number)
        .flat_map("copies", |n: i64| Ok((0..n).map(move |i| (n, i))))
        .map("label", |(n, i): (i64, i64)| Ok(format!("{n}.{i}")))
        .sink(|s: &String| s.clone().into_bytes());
    let r = run(job, lines(&["3", "0", "1", "4"]), 3, 1, false);
    assert_eq!(
        r.sorted(),
        ["1.0", "3.0", "3.1", "3.2", "4.0", "4.1", "4.2", "4.3"]
    );
    assert_eq!(r.max_in_flight, 1);
    assert_eq!((r.summary.messages, r.summary.outputs), (4, 8));
}

#[test]
fn a_panicking_flat_map_output_dead_letters_its_record_and_the_others_go_on() {
    std::panic::set_hook(Box::new(|_| {}));
    let job = Job::new("fan out")
        .decode(number)
        .flat_map("copies", |n: i64| Ok(0..n))
        .map("fragile", |i: i64| {
            if i == 2 {
                panic!("output {i} broke");
            }
            Ok(i)
        })
        .sink(|i: &i64| i.to_string().into_bytes());
    let r = run(job, lines(&["2", "4"]), 2, 2, false);
    // Record 4's outputs 0, 1 and 3 still go out; its panic dead-letters it.
    assert_eq!(r.sorted(), ["0", "0", "1", "1", "3"]);
    assert_eq!(r.dead.len(), 1);
    assert_eq!(r.dead[0].1, "4");
    assert!(r.dead[0].2.contains("output 2 broke"), "{:?}", r.dead);
}

/// Every key's emitted values are exactly 1, 2, ..., n: a lost update
/// would emit one value twice and never reach n.
#[test]
fn keyed_reduce_emits_each_rolling_value_once_under_concurrency() {
    const RECORDS: usize = 20_000;
    const KEYS: usize = 7;
    let job = Job::new("counts")
        .decode(|input| Ok(input.payload().to_vec()))
        .map("one", |key: Vec<u8>| Ok((key, 1u64)))
        .key_by(|(key, _): &(Vec<u8>, u64)| key.clone())
        .reduce("count", |(key, a): &(Vec<u8>, u64), (_, b)| {
            Ok((key.clone(), a + b))
        })
        .sink(|(key, n): &(Vec<u8>, u64)| {
            format!("{}={n}", String::from_utf8_lossy(key)).into_bytes()
        });
    let keys: Vec<String> = (0..RECORDS)
        .map(|i| format!("k{}", (i * i + i / 3) % KEYS))
        .collect();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for k in &keys {
        *expected.entry(k.clone()).or_default() += 1;
    }
    let input: Vec<Envelope> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(0, i as i64, k))
        .collect();
    let r = run(job, input, 4, 64, false);
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for out in r.payloads() {
        let (k, n) = out.split_once('=').unwrap();
        seen.entry(k.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    assert_eq!(seen.len(), expected.len());
    for (k, mut values) in seen {
        values.sort_unstable();
        let want: Vec<u64> = (1..=expected[&k]).collect();
        assert_eq!(values, want, "key {k}");
    }
}

/// `by_input_partition`: a key read from two partitions has a count in
/// each, each exact, on many workers; without it, one count for the job.
#[test]
fn state_by_input_partition_keeps_a_count_per_partition() {
    let counting = |partitioned: bool| {
        let keyed = Job::new("counts")
            .decode(|input| Ok((input.payload().to_vec(), 1u64)))
            .key_by(|(key, _): &(Vec<u8>, u64)| key.clone());
        let keyed = if partitioned {
            keyed.by_input_partition()
        } else {
            keyed
        };
        keyed
            .reduce("count", |(key, a): &(Vec<u8>, u64), (_, b)| {
                Ok((key.clone(), a + b))
            })
            .sink(|(key, n): &(Vec<u8>, u64)| {
                format!("{}={n}", String::from_utf8_lossy(key)).into_bytes()
            })
    };
    // 3,000 records of one key on each of partitions 0 and 1, interleaved.
    let input: Vec<Envelope> = (0..6_000)
        .map(|i| record(i % 2, i64::from(i / 2), "k"))
        .collect();
    for (partitioned, last) in [(true, 3_000), (false, 6_000)] {
        let r = run(counting(partitioned), input.clone(), 4, 64, false);
        let mut values: Vec<u64> = r
            .payloads()
            .iter()
            .map(|out| out.strip_prefix("k=").unwrap().parse().unwrap())
            .collect();
        values.sort_unstable();
        let want: Vec<u64> = if partitioned {
            (1..=last).flat_map(|n| [n, n]).collect()
        } else {
            (1..=last).collect()
        };
        assert_eq!(values, want, "by input partition: {partitioned}");
    }
    // Two stages of one name would write one changelog.
    let twice = Job::new("twice")
        .decode(|input| Ok(input.payload().len() as u64))
        .key_by(|n: &u64| *n)
        .by_input_partition()
        .reduce("sum", |a: &u64, b| Ok(a + b))
        .key_by(|n: &u64| *n)
        .by_input_partition()
        .reduce("sum", |a: &u64, b| Ok(a + b))
        .sink(|n: &u64| n.to_string().into_bytes());
    assert_eq!(twice.keyed_stages(), ["sum", "sum"]);
    let clash = twice.attach_topics(
        |stage| format!("g-{stage}-repartition"),
        |stage| format!("g-{stage}-changelog"),
    );
    assert!(clash.unwrap_err().contains("share topic g-sum-changelog"));
}

#[test]
fn a_panicking_or_failing_reduce_leaves_the_keys_state_as_it_was() {
    std::panic::set_hook(Box::new(|_| {}));
    let job = Job::new("sum")
        .decode(number)
        .key_by(|_: &i64| "all".to_owned())
        .reduce("sum", |a: &i64, b: i64| match b {
            13 => panic!("unlucky"),
            -1 => Err(Rejected::new("negative")),
            b => Ok(a + b),
        })
        .sink(|n: &i64| n.to_string().into_bytes());
    let r = run(job, lines(&["1", "13", "2", "-1", "3"]), 1, 1, false);
    assert_eq!(r.payloads(), ["1", "3", "6"]);
    let reasons: Vec<&str> = r.dead.iter().map(|d| d.2.as_str()).collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].contains("unlucky"), "{reasons:?}");
    assert_eq!(reasons[1], "stage sum: negative");
}

/// Per-key sums over 1 s tumbling windows with 500 ms of out-of-orderness.
/// One worker and a window of one, so records reach the window stage in
/// input order and the result is exact.
#[test]
fn tumbling_windows_close_on_the_partitions_watermark_and_late_records_are_dead_lettered() {
    let job = Job::new("window sums")
        .decode(|input| {
            let s = std::str::from_utf8(input.payload()).unwrap();
            let mut f = s.split(',');
            let key = f.next().unwrap().to_owned();
            let time: i64 = f.next().unwrap().parse().unwrap();
            let value: i64 = f.next().unwrap().parse().unwrap();
            Ok((key, time, value))
        })
        .key_by(|(k, _, _): &(String, i64, i64)| k.clone())
        .window(
            Tumbling::of(Duration::from_secs(1)).out_of_orderness(Duration::from_millis(500)),
            |(_, t, _): &(String, i64, i64)| *t,
        )
        .reduce("sum", |(k, t, a): &(String, i64, i64), (_, _, b)| {
            Ok((k.clone(), *t, a + b))
        })
        .sink(|w: &Windowed<String, (String, i64, i64)>| {
            format!("{}@{}-{}={}", w.key, w.start, w.end, w.value.2).into_bytes()
        });
    let input = vec![
        record(0, 0, "a,100,1"),
        record(0, 1, "b,200,2"),
        record(0, 2, "a,900,3"),
        record(0, 3, "a,1200,4"), // watermark 700
        record(0, 4, "b,600,5"),  // out of order, its window still open
        record(0, 5, "a,2600,6"), // watermark 2100: [0,1000) and [1000,2000) close
        record(0, 6, "b,800,7"),  // late: [0,1000) is closed
        record(1, 0, "c,150,9"),  // partition 1 has its own watermark: not late
        record(0, 7, "a,2700,8"),
    ];
    let r = run(job, input, 1, 1, false);
    // Three closed by the watermark, then two by the end of the input,
    // partition by partition.
    assert_eq!(r.payloads()[3..], ["a@2000-3000=14", "c@0-1000=9"]);
    assert_eq!(
        r.sorted(),
        [
            "a@0-1000=4",
            "a@1000-2000=4",
            "a@2000-3000=14",
            "b@0-1000=7",
            "c@0-1000=9"
        ]
    );
    assert_eq!(r.dead.len(), 1);
    let (position, payload, reason) = &r.dead[0];
    assert_eq!((position.offset, payload.as_str()), (6, "b,800,7"));
    assert!(
        reason.contains("late: event time 800 ms is in window [0, 1000) ms, closed at watermark 2100 ms of partition 0"),
        "{reason}"
    );
}

/// A stage whose time varies by record makes results finish out of input
/// order on several workers; `ordered` writes each partition's in order.
#[test]
fn ordered_writes_each_partitions_results_in_input_order() {
    let job = || {
        Job::new("uneven")
            .decode(|input| Ok((input.partition(), number(input)?)))
            .map("spin", |(p, n): (i32, i64)| {
                // Uneven work: a few records take far longer than the rest.
                let rounds = if n % 5 == 0 { 30_000 } else { 10 };
                let mut x = n as u64;
                for _ in 0..rounds {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                std::hint::black_box(x);
                Ok((p, n))
            })
            .filter("drop sevens", |(_, n): &(i32, i64)| Ok(n % 7 != 0))
            .sink(|(p, n): &(i32, i64)| format!("{p}:{n}").into_bytes())
    };
    let input = || -> Vec<Envelope> {
        (0..400i64)
            .map(|i| record((i % 2) as i32, i / 2, &i.to_string()))
            .collect()
    };
    let ordered = run(job(), input(), 4, 32, true);
    for p in 0..2 {
        let got: Vec<i64> = ordered
            .payloads()
            .iter()
            .filter_map(|s| s.strip_prefix(&format!("{p}:")).map(|n| n.parse().unwrap()))
            .collect();
        let want: Vec<i64> = (0..400).filter(|i| i % 2 == p && i % 7 != 0).collect();
        assert_eq!(got, want, "partition {p}");
    }
    // The same job unordered produces the same set.
    let unordered = run(job(), input(), 4, 32, false);
    assert_eq!(
        unordered.sorted().into_iter().collect::<BTreeSet<_>>(),
        ordered.sorted().into_iter().collect::<BTreeSet<_>>()
    );
}

/// Spins for a time that varies by record: a few take far longer than the
/// rest, so on several workers records finish their stages out of order.
fn uneven(n: i64) {
    let rounds = if n % 5 == 0 { 30_000 } else { 10 };
    let mut x = n as u64;
    for _ in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(x);
}

/// A reduce that appends is not commutative: its values show the order in
/// which a key's updates applied. Before the keyed stage, records run
/// uneven work on several workers, some are filtered out, some panic, and
/// each becomes two records of different keys; still each key's records
/// apply in their partition's input order, so every run, on any number of
/// workers, emits the same values: after each record, the key's records so
/// far, in input order.
#[test]
fn a_keyed_stage_applies_each_partitions_records_in_input_order() {
    std::panic::set_hook(Box::new(|_| {}));
    // (partition, key, the numbers applied so far)
    type Acc = (i32, i64, String);
    let job = || {
        Job::new("append")
            .decode(|input| Ok((input.partition(), number(input)?)))
            .map("uneven", |(p, n): (i32, i64)| {
                uneven(n);
                Ok((p, n))
            })
            .filter("drop sevens", |(_, n): &(i32, i64)| Ok(n % 7 != 0))
            .flat_map("twice", |(p, n): (i32, i64)| {
                Ok([
                    (p, n % 3, n.to_string()),
                    (p, (n + 1) % 3 + 3, format!("-{n}")),
                ])
            })
            .key_by(|(p, k, _): &Acc| (*p, *k))
            .reduce("append", |(p, k, so_far): &Acc, (_, _, next): Acc| {
                if next == "-39" {
                    panic!("thirty-nine");
                }
                Ok((*p, *k, format!("{so_far} {next}")))
            })
            .sink(|(p, k, all): &Acc| format!("{p}/{k}:{all}").into_bytes())
    };
    let input = || -> Vec<Envelope> {
        (0..600i64)
            .map(|i| record((i % 2) as i32, i / 2, &i.to_string()))
            .collect()
    };
    // What an in-order run emits, as a set: per key, every prefix of its
    // records in input order, once.
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut so_far: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for i in (0..600i64).filter(|i| i % 7 != 0) {
        for (k, v) in [(i % 3, i.to_string()), ((i + 1) % 3 + 3, format!("-{i}"))] {
            if v == "-39" {
                continue;
            }
            let p = i % 2;
            let all = so_far.entry((p, k)).or_default();
            *all = if all.is_empty() {
                v
            } else {
                format!("{all} {v}")
            };
            want.insert(format!("{p}/{k}:{all}"));
        }
    }
    for workers in [1, 2, 4] {
        let r = run(job(), input(), workers, 32, false);
        let got: BTreeSet<String> = r.payloads().into_iter().collect();
        assert_eq!(
            r.outputs.len(),
            want.len(),
            "{workers} workers: one value per update"
        );
        assert_eq!(got, want, "{workers} workers");
        // The panicking update dead-lettered its record, and nothing else.
        assert_eq!(r.dead.len(), 1, "{workers} workers: {:?}", r.dead);
        assert!(r.dead[0].2.contains("thirty-nine"), "{:?}", r.dead);
    }
}

/// Two keyed stages in one job: each applies in input order, the second
/// behind the first. The second keeps one value per partition and appends
/// every record's number, so its values are the prefixes of each
/// partition's input.
#[test]
fn two_keyed_stages_each_apply_in_input_order() {
    // (partition, number, the first stage's value, the second's)
    type Rec = (i32, i64, i64, String);
    let job = Job::new("two keyed")
        .decode(|input| {
            let n = number(input)?;
            Ok((input.partition(), n, 0, n.to_string()))
        })
        .map("uneven", |r: Rec| {
            uneven(r.1);
            Ok(r)
        })
        .key_by(|r: &Rec| (r.0, r.1 % 3))
        .reduce("count", |a: &Rec, b: Rec| Ok((b.0, b.1, a.2 + 1, b.3)))
        .map("uneven again", |r: Rec| {
            uneven(r.1 + 1);
            Ok(r)
        })
        .key_by(|r: &Rec| r.0)
        .reduce("append", |a: &Rec, b: Rec| {
            Ok((b.0, b.1, b.2, format!("{} {}", a.3, b.1)))
        })
        .sink(|r: &Rec| format!("{}:{}", r.0, r.3).into_bytes());
    let input: Vec<Envelope> = (0..600i64)
        .map(|i| record((i % 2) as i32, i / 2, &(i / 2).to_string()))
        .collect();
    let r = run(job, input, 4, 32, false);
    let want: BTreeSet<String> = (0..2)
        .flat_map(|p| {
            (0..300i64).map(move |n| {
                let all: Vec<String> = (0..=n).map(|m| m.to_string()).collect();
                format!("{p}:{}", all.join(" "))
            })
        })
        .collect();
    assert_eq!(r.dead, []);
    assert_eq!(r.outputs.len(), want.len());
    assert_eq!(r.payloads().into_iter().collect::<BTreeSet<_>>(), want);
}

/// Records reach a window stage in their partition's input order however
/// many workers ran the stages before it, so an input in event-time order
/// needs no out-of-orderness allowance: nothing is late, and every sum is
/// exact.
#[test]
fn a_window_stage_sees_each_partition_in_input_order_on_many_workers() {
    let job = Job::new("window sums")
        .decode(|input| Ok((input.partition(), number(input)?)))
        .map("uneven", |(p, n): (i32, i64)| {
            uneven(n);
            Ok((p, n))
        })
        .key_by(|(p, _): &(i32, i64)| *p)
        // One window per 10 records; event time is the record's number.
        .window(
            Tumbling::of(Duration::from_millis(10)),
            |(_, n): &(i32, i64)| *n,
        )
        .reduce("sum", |(p, a): &(i32, i64), (_, b)| Ok((*p, a + b)))
        .sink(|w: &Windowed<i32, (i32, i64)>| {
            format!("{}@{}={}", w.key, w.start, w.value.1).into_bytes()
        });
    let input: Vec<Envelope> = (0..1000i64)
        .map(|i| record((i % 2) as i32, i / 2, &(i / 2).to_string()))
        .collect();
    let r = run(job, input, 4, 64, false);
    assert_eq!(r.dead, [], "no record is late");
    let want: BTreeSet<String> = (0..2)
        .flat_map(|p| {
            (0..50).map(move |w| format!("{p}@{}={}", w * 10, (w * 10..w * 10 + 10).sum::<i64>()))
        })
        .collect();
    assert_eq!(r.payloads().into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(r.outputs.len(), want.len(), "each window emitted once");
}

/// The Kafka record's metadata reaches the job, and the job sets the
/// output key.
#[test]
fn the_job_sees_key_headers_timestamp_partition_and_offset_and_sets_the_output_key() {
    let job = Job::new("metadata")
        .decode(|input| {
            Ok(format!(
                "key={} trace={} ts={:?} at={}/{} headers={}",
                String::from_utf8_lossy(input.key().unwrap_or(b"-")),
                String::from_utf8_lossy(input.header("trace").unwrap_or(b"-")),
                input.timestamp(),
                input.partition(),
                input.offset(),
                input.headers().len()
            ))
        })
        .sink_keyed(|s: &String| {
            let key = s.starts_with("key=k1").then(|| b"out-key".to_vec());
            (key, s.clone().into_bytes())
        });
    let mut with_meta = record(3, 41, "x");
    with_meta.key = Some(b"k1".to_vec());
    with_meta.headers = vec![("trace".into(), b"t-9".to_vec()), ("other".into(), vec![])];
    with_meta.timestamp = Some(1_700_000_000_123);
    let mut keyed = record(3, 42, "y");
    keyed.key = Some(b"k2".to_vec());
    let r = run(job, vec![with_meta, keyed], 1, 1, true);
    assert_eq!(
        r.outputs,
        [
            (
                Some(b"out-key".to_vec()),
                "key=k1 trace=t-9 ts=Some(1700000000123) at=3/41 headers=2".to_owned()
            ),
            // No key set: the input's key is kept.
            (
                Some(b"k2".to_vec()),
                "key=k2 trace=- ts=None at=3/42 headers=0".to_owned()
            ),
        ]
    );
}
