//! JSON lines on stdin and stdout, so records can be piped through a job.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{ConnectorError, Envelope, Polled, Position, Sink, Source};

/// Reads one record per line. The position's offset is the line number
/// (from 1), so errors can name the line. Blank lines are skipped.
///
/// Lines are read on a helper thread so that `poll` honours its timeout
/// and the driver stays responsive to shutdown while stdin is quiet.
pub struct StdinSource {
    lines: mpsc::Receiver<Result<(i64, Vec<u8>), std::io::Error>>,
}

impl StdinSource {
    pub fn new() -> StdinSource {
        Self::from_reader(std::io::BufReader::new(std::io::stdin()))
    }

    /// Reads lines from any reader; `new` is this on stdin.
    pub fn from_reader<R: BufRead + Send + 'static>(reader: R) -> StdinSource {
        // Bounded: the reader thread stays at most a few lines ahead.
        let (tx, rx) = mpsc::sync_channel(16);
        std::thread::Builder::new()
            .name("fila-stdin".into())
            .spawn(move || {
                for (i, line) in reader.split(b'\n').enumerate() {
                    let line = line.map(|mut l| {
                        if l.last() == Some(&b'\r') {
                            l.pop();
                        }
                        (i as i64 + 1, l)
                    });
                    let failed = line.is_err();
                    if tx.send(line).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the stdin reader thread");
        StdinSource { lines: rx }
    }
}

impl Default for StdinSource {
    fn default() -> Self {
        Self::new()
    }
}

impl Source for StdinSource {
    fn poll(&mut self, timeout: Duration) -> Result<Polled, ConnectorError> {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(Ok((_, line))) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Ok((number, line))) => {
                    return Ok(Polled::Record(Envelope {
                        key: None,
                        headers: Vec::new(),
                        timestamp: None,
                        payload: line,
                        position: Position {
                            partition: 0,
                            offset: number,
                        },
                        arrived: Instant::now(),
                    }))
                }
                Ok(Err(source)) => {
                    return Err(ConnectorError::Io {
                        what: "stdin".into(),
                        source,
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(Polled::Idle),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(Polled::End),
            }
        }
    }
}

/// Writes one record per line on stdout. Dead letters are reported on
/// stderr with their line number.
pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

fn stdout_error(source: std::io::Error) -> ConnectorError {
    ConnectorError::Io {
        what: "stdout".into(),
        source,
    }
}

impl Sink for StdoutSink {
    fn send(&mut self, _key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        self.out.write_all(payload).map_err(stdout_error)?;
        self.out.write_all(b"\n").map_err(stdout_error)
    }

    fn dead_letter(
        &mut self,
        position: Position,
        _key: Option<&[u8]>,
        _payload: &[u8],
        reason: &str,
    ) -> Result<(), ConnectorError> {
        eprintln!("fila: line {}: {reason}", position.offset);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.out.flush().map_err(stdout_error)
    }

    fn has_dead_letter_destination(&self) -> bool {
        // stderr is where a user piping records looks for the bad ones.
        true
    }
}

/// Drops outputs; used when only the report matters (`fila run` on the
/// embedded burst).
#[derive(Default)]
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn send(&mut self, _key: Option<&[u8]>, _payload: &[u8]) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn dead_letter(
        &mut self,
        _: Position,
        _: Option<&[u8]>,
        _: &[u8],
        _: &str,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
