//! Kafka source and sink on the `kafka` crate (protocol v0, so Kafka 3.x
//! brokers only; 4.x removed v0 of Produce, Fetch and ListOffsets).
//!
//! Partitions are assigned explicitly, never through a consumer group's
//! membership protocol (the crate has none): all of them, or with a
//! [`Replica`](super::Replica) `i/n`, the partitions p with p mod n = i.
//! Offsets are stored in Kafka under the group, and only ever committed up
//! to what `Acks` allows. Protocol v0 has no record headers and no
//! timestamps, so keys are not carried through and a dead letter is a JSON
//! envelope.
//!
//! One file per concern: connecting and what the client's errors mean
//! ([`config`]), the reader the source and the tools share ([`fetch`]),
//! the source ([`source`]), its committer ([`commit`]), the writer the
//! sink and the tools share ([`produce`]), the sink ([`sink`]), what only
//! the load client and the tests call ([`tools`]), and topic and offset
//! look-ups ([`admin`]).

mod admin;
mod commit;
mod config;
mod fetch;
mod produce;
mod sink;
mod source;
mod tools;

pub(super) use admin::commit_group_offsets;
pub(super) use fetch::TopicReader;
pub(super) use produce::TopicWriter;
pub(super) use sink::KafkaSink;
pub(super) use source::KafkaSource;
