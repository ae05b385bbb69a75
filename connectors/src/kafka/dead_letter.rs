//! The headers of a dead letter, which neither client owns: the sink
//! writes them, and whoever reads the dead-letter topic reads them back.

/// The topic the record was read from.
pub const DLQ_TOPIC_HEADER: &str = "fila.source.topic";
/// Its partition, as decimal text.
pub const DLQ_PARTITION_HEADER: &str = "fila.source.partition";
/// Its offset, as decimal text.
pub const DLQ_OFFSET_HEADER: &str = "fila.source.offset";
/// Why it could not be processed.
pub const DLQ_REASON_HEADER: &str = "fila.reason";
