//! Property tests of the reference job's record decoder, the first thing
//! hostile input meets: for any bytes it returns a record or a reason and
//! never panics; what it accepts is exactly a well-formed record within
//! the stage cap; and what it accepts re-encodes to the same record.

use fila_pipeline::reference::{decode, encode, FibRecord, MAX_STAGE};
use proptest::prelude::*;

/// Arbitrary bytes, and bytes close to a record: a valid record with one
/// byte changed, cut short, or with bytes added.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let record = (
        any::<u64>(),
        proptest::array::uniform5(0..60u32),
        any::<u64>(),
    )
        .prop_map(|(id, stages, ts)| encode(&FibRecord::new(id, stages, ts)));
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (record.clone(), any::<usize>(), any::<u8>()).prop_map(|(mut r, i, b)| {
            let i = i % r.len();
            r[i] = b;
            r
        }),
        (record.clone(), any::<usize>()).prop_map(|(r, n)| r[..n % r.len()].to_vec()),
        (record, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(r, tail)| { [r, tail].concat() }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decode_never_panics_and_accepts_only_records_within_the_cap(bytes in input()) {
        match decode(&bytes, MAX_STAGE) {
            Ok(record) => {
                prop_assert!(record.stages().iter().all(|&n| n <= MAX_STAGE));
                // Accepted input is a record serde_json reads too, and the
                // record survives a round trip.
                let again = decode(&encode(&record), MAX_STAGE).unwrap();
                prop_assert_eq!(again, record);
            }
            Err(reason) => prop_assert!(!reason.0.is_empty()),
        }
    }

    #[test]
    fn every_well_formed_record_within_the_cap_is_accepted(
        id in any::<u64>(),
        stages in proptest::array::uniform5(0..=MAX_STAGE),
        ts in any::<u64>(),
    ) {
        let record = FibRecord::new(id, stages, ts);
        prop_assert_eq!(decode(&encode(&record), MAX_STAGE).unwrap(), record);
    }

    #[test]
    fn a_stage_above_the_cap_is_rejected_with_a_reason_naming_it(
        stages in proptest::array::uniform5(0..=MAX_STAGE),
        k in 0..5usize,
        over in prop_oneof![Just(MAX_STAGE + 1), MAX_STAGE + 1..=u32::MAX],
    ) {
        let mut stages = stages;
        stages[k] = over;
        let reason = decode(&encode(&FibRecord::new(1, stages, 0)), MAX_STAGE).unwrap_err().0;
        prop_assert!(reason.contains(&format!("stage{}", k + 1)), "{}", reason);
    }
}
