//! The headers of a dead letter, which neither client owns: the sink
//! writes them, and whoever reads the dead-letter topic reads them back.
//! And how a dead letter too large for its topic is cut to fit.

/// The topic the record was read from.
pub const DLQ_TOPIC_HEADER: &str = "fila.source.topic";
/// Its partition, as decimal text.
pub const DLQ_PARTITION_HEADER: &str = "fila.source.partition";
/// Its offset, as decimal text.
pub const DLQ_OFFSET_HEADER: &str = "fila.source.offset";
/// Why it could not be processed.
pub const DLQ_REASON_HEADER: &str = "fila.reason";

/// A Kafka broker's default `message.max.bytes`: the largest record
/// batch a topic takes unless its own `max.message.bytes` says otherwise.
pub(crate) const BROKER_DEFAULT_RECORD_LIMIT: usize = 1_048_588;

/// What a batch of one record takes beside the record's key, value and
/// headers, at most, rounded up: the batch's header, the record's framing,
/// its headers' names and lengths (a dead letter's four), or the JSON
/// envelope of the `kafka` client's dead letter.
const FRAMING: usize = 1024;

/// What a record of key, value and headers may take in a topic whose
/// limit is `limit`.
pub(crate) fn room(limit: usize) -> usize {
    limit.saturating_sub(FRAMING)
}

/// A dead letter whose record is larger than its topic takes (the topic's
/// `max.message.bytes` is under the input's, or the record is one the
/// size cap let through): the payload is cut so that the letter fits, and
/// the reason says so. A dead letter that does not fit whole would fail
/// every attempt to write it, and with it the run. The whole record stays
/// in the input topic at the offset the letter names.
///
/// `payload` is the payload's length, `rest` what the letter holds beside
/// the payload and the reason (key, other headers, envelope), `limit` the
/// topic's limit. Returns how many of the payload's bytes to keep and the
/// reason to write, or `None` when the letter fits whole.
pub(crate) fn cut_to_fit(
    payload: usize,
    rest: usize,
    reason: &str,
    limit: usize,
) -> Option<(usize, String)> {
    let room = room(limit);
    if rest + reason.len() + payload <= room {
        return None;
    }
    // A reason that takes much of the room (a panic message quoting the
    // record, say) is cut too.
    let reason = prefix(reason, reason_room(limit));
    // The note's figure for what is kept has at most as many digits as
    // the payload's length.
    let kept = room
        .saturating_sub(rest + cut_note(reason, payload, payload, limit).len())
        .min(payload);
    Some((kept, cut_note(reason, kept, payload, limit)))
}

/// How much a cut letter's reason may take of a topic whose limit is
/// `limit`: its first bytes, if it is longer.
pub(crate) fn reason_room(limit: usize) -> usize {
    room(limit) / 4
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a
/// character's boundary.
pub(crate) fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The reason of a dead letter that keeps `kept` of its record's `whole`
/// bytes, its topic taking records of at most `limit`.
pub(crate) fn cut_note(reason: &str, kept: usize, whole: usize, limit: usize) -> String {
    format!(
        "{reason} (the dead letter keeps the first {kept} of the record's {whole} bytes: \
         its topic takes records of at most {limit} bytes)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_that_fits_is_left_whole() {
        assert_eq!(cut_to_fit(1_000, 100, "not JSON", 10_000), None);
        assert_eq!(
            cut_to_fit(10_000 - FRAMING - 108, 100, "not JSON", 10_000),
            None
        );
    }

    #[test]
    fn a_letter_too_large_keeps_what_fits_and_says_so() {
        let (limit, rest) = (10_000, 100);
        let (kept, reason) = cut_to_fit(50_000, rest, "not JSON", limit).unwrap();
        assert!(kept > 0 && rest + reason.len() + kept <= limit - FRAMING);
        assert_eq!(
            reason,
            format!(
                "not JSON (the dead letter keeps the first {kept} of the record's 50000 bytes: \
                 its topic takes records of at most 10000 bytes)"
            )
        );
        // Just over the room: cut by a little.
        let payload = limit - FRAMING - rest - 8 + 1;
        let (kept, reason) = cut_to_fit(payload, rest, "not JSON", limit).unwrap();
        assert!(kept < payload && rest + reason.len() + kept <= limit - FRAMING);
    }

    #[test]
    fn a_reason_that_takes_much_of_the_room_is_cut_too() {
        let reason = "é".repeat(10_000);
        let (kept, noted) = cut_to_fit(50_000, 100, &reason, 10_000).unwrap();
        assert!(kept > 0 && 100 + noted.len() + kept <= 10_000 - FRAMING);
        assert!(noted.starts_with(&"é".repeat(1_000)), "{noted}");
    }

    #[test]
    fn a_letter_whose_rest_does_not_fit_keeps_nothing_of_the_payload() {
        let (kept, _) = cut_to_fit(5_000, 20_000, "not JSON", 10_000).unwrap();
        assert_eq!(kept, 0);
    }
}
