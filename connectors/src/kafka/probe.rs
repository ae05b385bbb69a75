//! What a broker speaks, asked directly: one ApiVersions request (v0, which
//! every broker version answers) on a plain socket.
//!
//! Two decisions need it before any client is made: which consumer-group
//! protocol to use (KIP-848 needs the ConsumerGroupHeartbeat API), and
//! whether the `kafka` crate's protocol v0 can work at all (Kafka 4.0
//! removed Fetch v0-3). It also turns an unreachable broker into an error
//! at once, where librdkafka would retry quietly forever.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{error, hosts};
use crate::ConnectorError;

const API_FETCH: i16 = 1;
const API_VERSIONS: i16 = 18;
const API_CONSUMER_GROUP_HEARTBEAT: i16 = 68;

/// The API versions one broker supports: key to (min, max).
#[derive(Debug, Clone)]
pub struct BrokerVersions {
    /// The bootstrap address that answered.
    pub address: String,
    apis: BTreeMap<i16, (i16, i16)>,
}

impl BrokerVersions {
    /// Asks the first bootstrap broker of `brokers` that answers.
    pub fn probe(brokers: &str) -> Result<BrokerVersions, ConnectorError> {
        let mut failures = Vec::new();
        for host in hosts(brokers)? {
            match ask(&host) {
                Ok(apis) => {
                    return Ok(BrokerVersions {
                        address: host,
                        apis,
                    })
                }
                Err(e) => failures.push(format!("{host}: {e}")),
            }
        }
        Err(error(
            brokers,
            format!(
                "cannot connect to any broker (is Kafka running there?): {}",
                failures.join("; ")
            ),
        ))
    }

    /// Whether the broker serves KIP-848 consumer groups. Kafka 3.x
    /// advertises the heartbeat API while the protocol is a preview that
    /// its group coordinator refuses by default; 4.0 made it generally
    /// available, in the same release that dropped Fetch v0-3.
    pub fn offers_consumer_protocol(&self) -> bool {
        self.apis.contains_key(&API_CONSUMER_GROUP_HEARTBEAT) && !self.accepts_v0_fetch()
    }

    /// Whether the broker still accepts protocol v0 fetches. Kafka 4.x
    /// does not (KIP-896).
    pub fn accepts_v0_fetch(&self) -> bool {
        self.apis.get(&API_FETCH).is_some_and(|&(min, _)| min == 0)
    }
}

fn ask(host: &str) -> std::io::Result<BTreeMap<i16, (i16, i16)>> {
    let timeout = Duration::from_secs(5);
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&request(7))?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    if !(6..=1 << 20).contains(&size) {
        return Err(bad("a response size out of range"));
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body)?;
    parse(&body, 7)
}

/// An ApiVersions v0 request with header v1, length-prefixed.
fn request(correlation_id: i32) -> Vec<u8> {
    let client = b"fila-probe";
    let mut body = Vec::new();
    body.extend(API_VERSIONS.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(correlation_id.to_be_bytes());
    body.extend((client.len() as i16).to_be_bytes());
    body.extend(client);
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a Kafka ApiVersions answer: {what}"),
    )
}

/// Reads correlation id, error code and the (key, min, max) array.
fn parse(body: &[u8], correlation_id: i32) -> std::io::Result<BTreeMap<i16, (i16, i16)>> {
    let mut at = 0;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        let s = body.get(at..at + n).ok_or_else(|| bad("cut short"))?;
        at += n;
        Ok(s)
    };
    let i16_of = |s: &[u8]| i16::from_be_bytes([s[0], s[1]]);
    let id = i32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    if id != correlation_id {
        return Err(bad("another correlation id"));
    }
    let code = i16_of(take(2)?);
    if code != 0 {
        return Err(bad(&format!("error code {code}")));
    }
    let count = i32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    if !(0..=10_000).contains(&count) {
        return Err(bad("an API count out of range"));
    }
    let mut apis = BTreeMap::new();
    for _ in 0..count {
        let entry = take(6)?;
        apis.insert(
            i16_of(&entry[0..2]),
            (i16_of(&entry[2..4]), i16_of(&entry[4..6])),
        );
    }
    Ok(apis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(apis: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut body = 7i32.to_be_bytes().to_vec();
        body.extend(0i16.to_be_bytes());
        body.extend((apis.len() as i32).to_be_bytes());
        for &(k, min, max) in apis {
            for v in [k, min, max] {
                body.extend(v.to_be_bytes());
            }
        }
        body
    }

    #[test]
    fn the_request_is_apiversions_v0_with_its_length_prefix() {
        let r = request(7);
        assert_eq!(
            i32::from_be_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len() - 4
        );
        assert_eq!(&r[4..8], &[0, 18, 0, 0]);
        assert_eq!(&r[8..12], &7i32.to_be_bytes());
    }

    #[test]
    fn a_4x_broker_is_told_by_its_fetch_floor_and_heartbeat_api() {
        let apis = parse(&answer(&[(1, 4, 17), (18, 0, 4), (68, 0, 1)]), 7).unwrap();
        let v = BrokerVersions {
            address: "x".into(),
            apis,
        };
        assert!(!v.accepts_v0_fetch());
        assert!(v.offers_consumer_protocol());
        // Kafka 3.9 advertises the heartbeat API, as a preview.
        let apis = parse(&answer(&[(1, 0, 17), (18, 0, 4), (68, 0, 0)]), 7).unwrap();
        let v = BrokerVersions {
            address: "x".into(),
            apis,
        };
        assert!(v.accepts_v0_fetch());
        assert!(!v.offers_consumer_protocol());
    }

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let good = answer(&[(1, 0, 17)]);
        for cut in 0..good.len() {
            assert!(parse(&good[..cut], 7).is_err(), "cut at {cut}");
        }
        assert!(parse(&good, 8).is_err());
        let mut huge = 7i32.to_be_bytes().to_vec();
        huge.extend(0i16.to_be_bytes());
        huge.extend(i32::MAX.to_be_bytes());
        assert!(parse(&huge, 7).is_err());
    }

    #[test]
    fn an_unreachable_broker_is_named_in_the_error() {
        // Port 1 on loopback: nothing listens there, so connect fails at once.
        let e = BrokerVersions::probe("127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.1:1") && e.contains("cannot connect"),
            "{e}"
        );
    }
}
