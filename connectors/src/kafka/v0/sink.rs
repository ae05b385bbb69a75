//! The pipeline's sink: outputs to the output topic, dead letters as JSON
//! envelopes, the whole batch sent again after a broker fault.

use serde::Serialize;

use super::config::Failure;
use super::produce::TopicWriter;
use crate::kafka::dead_letter::{cut_note, cut_to_fit, reason_room, BROKER_DEFAULT_RECORD_LIMIT};
use crate::kafka::{Outage, SinkConfig};
use crate::{ConnectorError, Position, Sink};

/// What goes to the dead-letter topic for a record fila could not process.
#[derive(Serialize)]
struct DeadLetter<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'a str,
    /// The original value, as text (invalid UTF-8 replaced).
    payload: String,
}

/// The largest dead letter written. This client cannot ask a topic for its
/// limit (`max.message.bytes`), so it assumes the broker's default: a dead
/// letter over it is cut to fit, and one to a topic that takes less fails
/// the run.
const DLQ_LIMIT: usize = BROKER_DEFAULT_RECORD_LIMIT;

/// The pipeline's sink: results to the output topic, rejected records to
/// the dead-letter topic if one is set. `flush` returns once the broker has
/// acknowledged everything sent, which is what lets offsets be committed.
///
/// A broker fault during a flush is retried, after a backoff, on a new
/// producer, for up to the retry timeout. The whole batch is sent again:
/// what the broker had already taken is written twice, which at-least-once
/// allows (and the batch is at most a window).
pub(crate) struct KafkaSink {
    /// `None` after a transient failure, until the next attempt connects.
    writer: Option<TopicWriter>,
    brokers: String,
    output_topic: String,
    dlq_topic: Option<String>,
    input_topic: String,
    pending: Vec<(bool, Vec<u8>)>,
    outage: Outage,
}

impl KafkaSink {
    pub fn connect(config: &SinkConfig) -> Result<KafkaSink, ConnectorError> {
        let mut sink = KafkaSink {
            writer: None,
            brokers: config.cluster.brokers.clone(),
            output_topic: config.output_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            input_topic: config.input_topic.clone(),
            pending: Vec::new(),
            outage: Outage::new(&config.cluster.brokers, config.retry_timeout),
        };
        sink.writer = Some(TopicWriter::connect(
            &config.cluster.brokers,
            &sink.topics(),
        )?);
        Ok(sink)
    }

    fn topics(&self) -> Vec<&str> {
        let mut topics = vec![self.output_topic.as_str()];
        topics.extend(self.dlq_topic.as_deref());
        topics
    }

    fn try_flush(&mut self) -> Result<(), Failure> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let writer = TopicWriter::connect(&self.brokers, &self.topics())
                    .map_err(|e| Failure::Transient(e.to_string()))?;
                self.writer.insert(writer)
            }
        };
        let dlq = self.dlq_topic.as_deref().unwrap_or(&self.output_topic);
        let records: Vec<(&str, &[u8])> = self
            .pending
            .iter()
            .map(|(dead, v)| {
                (
                    if *dead {
                        dlq
                    } else {
                        self.output_topic.as_str()
                    },
                    v.as_slice(),
                )
            })
            .collect();
        writer.try_send_all(&records)
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, _key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.pending.push((false, payload.to_vec()));
        Ok(())
    }

    fn dead_letter(
        &mut self,
        position: Position,
        _key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let letter = |payload: &str, reason: &str| {
            let letter = DeadLetter {
                topic: &self.input_topic,
                partition: position.partition,
                offset: position.offset,
                reason,
                payload: payload.to_owned(),
            };
            serde_json::to_vec(&letter).expect("a dead letter always serializes")
        };
        let text = String::from_utf8_lossy(payload);
        // In JSON text escapes take more than the characters they stand
        // for: a cut counts the payload as escaped.
        let escaped = |c: char| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if c < ' ' => 6,
            c => c.len_utf8(),
        };
        // The first bytes of `text` that take at most `room` escaped.
        let escaped_prefix = |text: &str, room: usize| -> usize {
            let mut used = 0;
            text.char_indices()
                .find(|&(_, c)| {
                    used += escaped(c);
                    used > room
                })
                .map_or(text.len(), |(at, _)| at)
        };
        // A reason too long for a cut letter is cut by its escaped length,
        // and its escapes count with the rest.
        let reason = &reason[..escaped_prefix(reason, reason_room(DLQ_LIMIT))];
        let rest = letter("", "").len() + reason.chars().map(escaped).sum::<usize>() - reason.len();
        let cut = cut_to_fit(text.chars().map(escaped).sum(), rest, reason, DLQ_LIMIT);
        let bytes = match cut {
            None => letter(&text, reason),
            Some((room, _)) => {
                let kept = escaped_prefix(&text, room);
                let noted = cut_note(reason, kept, text.len(), DLQ_LIMIT);
                tracing::warn!(
                    partition = position.partition,
                    offset = position.offset,
                    "dead letter cut to fit: {noted}"
                );
                letter(&text[..kept], &noted)
            }
        };
        self.pending.push((true, bytes));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        loop {
            match self.try_flush() {
                Ok(()) => {
                    self.outage.succeeded();
                    self.pending.clear();
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(cause)) => {
                    self.outage.failed(&cause);
                    self.outage.check()?;
                    self.writer = None;
                    std::thread::sleep(self.outage.backoff());
                }
            }
        }
    }

    fn has_dead_letter_destination(&self) -> bool {
        self.dlq_topic.is_some()
    }
}
