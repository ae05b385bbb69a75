//! The in-process burst generator: N records, all available at once.

use std::time::{Duration, Instant};

use crate::{ConnectorError, Envelope, Polled, Position, Source};

/// Hands out `count` records made by `make(i)`, all of which arrived when
/// the source was created: a burst that lands at time 0.
pub struct BurstSource<F> {
    make: F,
    count: u64,
    next: u64,
    arrived: Instant,
}

impl<F: FnMut(u64) -> Vec<u8> + Send> BurstSource<F> {
    pub fn new(count: u64, make: F) -> Self {
        BurstSource {
            make,
            count,
            next: 0,
            arrived: Instant::now(),
        }
    }
}

impl<F: FnMut(u64) -> Vec<u8> + Send> Source for BurstSource<F> {
    fn poll(&mut self, _timeout: Duration) -> Result<Polled, ConnectorError> {
        if self.next == self.count {
            return Ok(Polled::End);
        }
        let i = self.next;
        self.next += 1;
        Ok(Polled::Record(Envelope {
            key: None,
            headers: Vec::new(),
            timestamp: None,
            payload: (self.make)(i),
            position: Position {
                partition: 0,
                offset: i as i64,
            },
            arrived: self.arrived,
        }))
    }
}
