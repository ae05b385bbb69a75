/// Errors from sources and sinks. Each names what it was talking to.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("Kafka broker {brokers}: {message}")]
    Kafka { brokers: String, message: String },
    #[error("Kafka client configuration: {message}")]
    Config { message: String },
}
