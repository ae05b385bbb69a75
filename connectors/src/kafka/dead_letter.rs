//! The headers of a dead letter, which neither client owns: the sink
//! writes them, and whoever reads the dead-letter topic reads them back.

/// Headers of a dead letter: where the record was, and why it failed.
pub const DLQ_TOPIC_HEADER: &str = "fila.source.topic";
pub const DLQ_PARTITION_HEADER: &str = "fila.source.partition";
pub const DLQ_OFFSET_HEADER: &str = "fila.source.offset";
pub const DLQ_REASON_HEADER: &str = "fila.reason";
