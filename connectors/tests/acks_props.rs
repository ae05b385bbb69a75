//! Property tests of the offset tracker: random interleavings of track,
//! ack (in any order, and twice), commit and release, checked after every
//! step against a plain model. `Acks` must never panic, never offer an
//! offset above a record that is not done, never move a committed offset
//! back, and count exactly what a crash would replay: the records read at
//! or above the committed offset, and their bytes.

use std::collections::{BTreeMap, BTreeSet};

use fila_connectors::{Ack, Acks, Position, Uncommitted};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Track the next record of partition `p`, `gap` offsets on, of
    /// `bytes` bytes.
    Track { p: i32, gap: i64, bytes: usize },
    /// Ack the `i`-th (mod count) record tracked so far, done or not.
    Ack { i: usize },
    /// Commit what is committable.
    Commit,
    /// Release partition `p`.
    Release { p: i32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3i32, 1..4i64, 0..100usize).prop_map(|(p, gap, bytes)| Op::Track { p, gap, bytes }),
        6 => any::<usize>().prop_map(|i| Op::Ack { i }),
        2 => Just(Op::Commit),
        1 => (0..3i32).prop_map(|p| Op::Release { p }),
    ]
}

/// What one partition should look like.
#[derive(Debug, Default)]
struct Model {
    outstanding: BTreeSet<i64>,
    /// One past the highest tracked, or where reading started.
    next: i64,
    committed: i64,
    /// Every record tracked, by offset, with its size.
    read: BTreeMap<i64, usize>,
    live: bool,
}

impl Model {
    fn committable(&self) -> i64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn acks_matches_its_model(
        starts in proptest::collection::vec(0..1_000i64, 3),
        started in proptest::collection::vec(any::<bool>(), 3),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let acks = Acks::new();
        let mut model: BTreeMap<i32, Model> = BTreeMap::new();
        for p in 0..3 {
            // Some partitions are started where reading resumes; the
            // others start at their first tracked record.
            if started[p as usize] {
                acks.start_partition(p, starts[p as usize]);
                model.insert(p, Model {
                    next: starts[p as usize],
                    committed: starts[p as usize],
                    live: true,
                    ..Model::default()
                });
            }
        }
        let mut tracked: Vec<Position> = Vec::new();
        let mut released: BTreeSet<Position> = BTreeSet::new();
        let mut done: BTreeSet<Position> = BTreeSet::new();
        let mut gone: BTreeSet<i32> = BTreeSet::new();

        for op in ops {
            match op {
                Op::Track { p, gap, bytes } => {
                    if gone.contains(&p) {
                        continue;
                    }
                    let offset = model
                        .get(&p)
                        .map_or(starts[p as usize] + gap - 1, |m| m.next + gap - 1);
                    // The first record of a partition not started is where
                    // reading resumed.
                    let m = model.entry(p).or_insert_with(|| Model {
                        next: offset,
                        committed: offset,
                        live: true,
                        ..Model::default()
                    });
                    let position = Position { partition: p, offset };
                    acks.track(position, bytes);
                    m.outstanding.insert(offset);
                    m.read.insert(offset, bytes);
                    m.next = m.next.max(offset + 1);
                    tracked.push(position);
                }
                Op::Ack { i } => {
                    if tracked.is_empty() {
                        continue;
                    }
                    let position = tracked[i % tracked.len()];
                    let expected = if released.remove(&position) {
                        Ack::Released
                    } else if done.contains(&position) || gone.contains(&position.partition) {
                        Ack::Unknown
                    } else {
                        Ack::Done
                    };
                    prop_assert_eq!(acks.ack(position), expected, "ack of {:?}", position);
                    if expected == Ack::Done {
                        done.insert(position);
                        model.get_mut(&position.partition).unwrap().outstanding.remove(&position.offset);
                    } else {
                        done.insert(position);
                    }
                }
                Op::Commit => {
                    let offered = acks.committable();
                    for &(p, offset) in &offered {
                        let m = &model[&p];
                        prop_assert!(m.live, "offered released partition {}", p);
                        prop_assert_eq!(offset, m.committable(), "partition {}", p);
                        prop_assert!(offset >= m.committed, "partition {} went back", p);
                    }
                    acks.mark_committed(&offered);
                    for (p, offset) in offered {
                        model.get_mut(&p).unwrap().committed = offset;
                    }
                }
                Op::Release { p } => {
                    if let Some(m) = model.remove(&p) {
                        for offset in m.outstanding {
                            released.insert(Position { partition: p, offset });
                        }
                    }
                    acks.release(&[p]);
                    gone.insert(p);
                }
            }

            // After every step: what is offered, what is outstanding, and
            // what a crash would replay.
            let offered: BTreeMap<i32, i64> = acks.committable().into_iter().collect();
            for (p, m) in &model {
                let want = m.committable();
                match offered.get(p) {
                    Some(&offset) => prop_assert_eq!(offset, want),
                    None => prop_assert_eq!(want, m.committed, "partition {} not offered", p),
                }
                if let Some(lowest) = m.outstanding.first() {
                    prop_assert!(want <= *lowest, "offers {} past outstanding {}", want, lowest);
                }
            }
            for p in offered.keys() {
                prop_assert!(model.contains_key(p), "offers unknown partition {}", p);
            }
            let replay = model
                .values()
                .flat_map(|m| m.read.range(m.committed..).map(|(_, &b)| b as u64))
                .fold(Uncommitted::default(), |u, b| Uncommitted {
                    records: u.records + 1,
                    bytes: u.bytes + b,
                });
            prop_assert_eq!(acks.uncommitted(), replay);
            let outstanding: usize = model.values().map(|m| m.outstanding.len()).sum();
            prop_assert_eq!(acks.outstanding(), outstanding);
        }
    }
}
