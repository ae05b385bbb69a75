//! JSON lines on stdin and stdout, so records can be piped through a job.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{ConnectorError, Envelope, Polled, Position, Sink, Source};

/// Reads one record per line. The position's offset is the line number
/// (from 1), so errors can name the line. Blank lines are skipped.
///
/// Lines are read on a helper thread so that `poll` honours its timeout
/// and the driver stays responsive to shutdown while stdin is quiet. A
/// line longer than the cap is not kept whole: its first `cap` bytes come
/// out as [`Polled::Oversized`] with its whole length, so a huge line costs
/// no more memory than the cap.
pub struct StdinSource {
    lines: mpsc::Receiver<Result<Line, std::io::Error>>,
}

/// A line read: its number, its bytes (at most the cap), and its whole
/// length.
type Line = (i64, Vec<u8>, u64);

/// The largest record fila takes from any source by default: the largest
/// it writes to Kafka, dead letters included.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 8 << 20;

impl StdinSource {
    pub fn new() -> StdinSource {
        Self::from_reader(
            std::io::BufReader::new(std::io::stdin()),
            DEFAULT_MAX_RECORD_BYTES,
        )
    }

    /// Reads lines from any reader, keeping at most `cap` bytes of each;
    /// `new` is this on stdin.
    pub fn from_reader<R: BufRead + Send + 'static>(reader: R, cap: u64) -> StdinSource {
        // Bounded: the reader thread stays at most a few lines ahead.
        let (tx, rx) = mpsc::sync_channel(16);
        std::thread::Builder::new()
            .name("fila-stdin".into())
            .spawn(move || {
                let mut reader = reader;
                for number in 1.. {
                    let line = read_line(&mut reader, cap as usize);
                    let (ended, failed) = (matches!(line, Ok(None)), line.is_err());
                    if ended {
                        return;
                    }
                    let line = line.map(|l| {
                        let (mut bytes, len) = l.expect("not at the end");
                        if bytes.last() == Some(&b'\r') && (bytes.len() as u64) == len {
                            bytes.pop();
                            return (number, bytes, len - 1);
                        }
                        (number, bytes, len)
                    });
                    if tx.send(line).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the stdin reader thread");
        StdinSource { lines: rx }
    }
}

/// Past this many bytes, a line's buffer is made the size of the cap.
const LONG_LINE: usize = 64 << 10;

/// The next line of `reader` without its newline: at most `cap` bytes of
/// it, and its whole length. `None` at the end of the input.
fn read_line<R: BufRead>(reader: &mut R, cap: usize) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let mut kept = Vec::new();
    let mut len = 0u64;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some((kept, len)));
        }
        any = true;
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], true),
            None => (buf, false),
        };
        let take = chunk.len().min(cap.saturating_sub(kept.len()));
        if kept.len() + take > LONG_LINE && kept.capacity() < cap {
            // A long line: one buffer of the cap from here, rather than a
            // doubling whose freed buffers the allocator may keep.
            kept.reserve_exact(cap - kept.len());
        }
        kept.extend_from_slice(&chunk[..take]);
        len += chunk.len() as u64;
        let used = chunk.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            return Ok(Some((kept, len)));
        }
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
                Ok(Ok((_, line, len)))
                    if len == line.len() as u64 && line.iter().all(u8::is_ascii_whitespace) =>
                {
                    continue
                }
                Ok(Ok((number, line, len))) => {
                    let whole = len <= line.len() as u64;
                    let envelope = Envelope {
                        key: None,
                        headers: Vec::new(),
                        timestamp: None,
                        payload: line,
                        position: Position {
                            partition: 0,
                            offset: number,
                        },
                        arrived: Instant::now(),
                    };
                    return Ok(if whole {
                        Polled::Record(envelope)
                    } else {
                        Polled::Oversized(envelope, len)
                    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn polled(input: &'static [u8], cap: u64) -> Vec<(i64, Vec<u8>, Option<u64>)> {
        let mut source = StdinSource::from_reader(input, cap);
        let mut out = Vec::new();
        loop {
            match source.poll(Duration::from_secs(5)).unwrap() {
                Polled::Record(e) => out.push((e.position.offset, e.payload, None)),
                Polled::Oversized(e, size) => out.push((e.position.offset, e.payload, Some(size))),
                Polled::Idle => panic!("a byte slice never idles"),
                Polled::End => return out,
            }
        }
    }

    #[test]
    fn lines_are_numbered_and_blank_ones_skipped() {
        let got = polled(b"a\r\n\n  \nbc\nlast", 8);
        assert_eq!(
            got,
            vec![
                (1, b"a".to_vec(), None),
                (4, b"bc".to_vec(), None),
                (5, b"last".to_vec(), None)
            ]
        );
    }

    #[test]
    fn a_line_over_the_cap_keeps_only_the_cap_and_says_its_size() {
        let got = polled(b"12345678\n123456789\nok\n          x\n", 8);
        assert_eq!(
            got,
            vec![
                (1, b"12345678".to_vec(), None),
                (2, b"12345678".to_vec(), Some(9)),
                (3, b"ok".to_vec(), None),
                // Blank up to the cap, but not blank.
                (4, b"        ".to_vec(), Some(11)),
            ]
        );
    }

    #[test]
    fn a_huge_line_is_read_through_a_small_buffer_in_bounded_memory() {
        // 64 MiB of one line through an 8 KiB buffer: what is kept is the
        // cap, whatever the line's length.
        let line = std::io::repeat(b'x').take(64 << 20);
        let rest: &[u8] = b"\nnext\n";
        let reader = std::io::BufReader::with_capacity(8 << 10, line.chain(rest));
        let mut source = StdinSource::from_reader(reader, 1 << 10);
        match source.poll(Duration::from_secs(30)).unwrap() {
            Polled::Oversized(e, size) => {
                assert_eq!(size, 64 << 20);
                assert_eq!(e.payload.len(), 1 << 10);
                assert!(e.payload.capacity() < 64 << 10, "{}", e.payload.capacity());
            }
            other => panic!("{other:?}"),
        }
        match source.poll(Duration::from_secs(5)).unwrap() {
            Polled::Record(e) => assert_eq!((e.position.offset, &e.payload[..]), (2, &b"next"[..])),
            other => panic!("{other:?}"),
        }
    }
}
