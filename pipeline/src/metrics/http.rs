//! A small HTTP endpoint for the metrics page and the health checks
//! (`--metrics-addr`).
//!
//! One thread, no executor: a `mio` event loop over non-blocking sockets
//! reads requests as their bytes arrive and writes answers as the peers
//! take them, so a client that connects and says nothing holds up nobody
//! else, and costs a few hundred bytes rather than a thread. Every
//! resource is bounded:
//!
//! - at most [`MAX_CONNECTIONS`] are open; a new connection beyond that
//!   closes the oldest one, so a flood of idle connections can delay a
//!   scrape by no more than its own, and never starve it;
//! - a connection that has not sent its whole request, or not taken its
//!   whole answer, within [`REQUEST_TIMEOUT`] is closed;
//! - a request head may take [`MAX_REQUEST_HEAD`] bytes (431 beyond);
//! - once its answer is written, a connection lingers at most [`LINGER`]
//!   for the peer to close.
//!
//! No general HTTP crate fits: the synchronous servers spawn a thread (or
//! hold a pool thread) per connection, and the rest need an async
//! executor. `httparse` parses the request head; answers are one
//! `Connection: close` response each.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Connections open at most.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a connection may take to send its request, and then to take
/// the answer, before it is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a request head may take, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// How long a connection whose answer is written waits for the peer to
/// close its side (see `Server::serve`).
const LINGER: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// Connections are numbered from here, in the order they were accepted.
const FIRST_CONNECTION: usize = 2;

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status line's code and reason, like `200 OK`.
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    /// A `200 OK` with `body` of `content_type`.
    pub fn ok(content_type: &'static str, body: String) -> Answer {
        Answer {
            status: "200 OK",
            content_type,
            body,
        }
    }

    /// A plain-text answer with `status`.
    pub fn text(status: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// A bound listener. `serve` answers requests until `stop`.
pub struct MetricsListener {
    listener: Mutex<Option<TcpListener>>,
    addr: SocketAddr,
    poll: Mutex<Option<Poll>>,
    waker: Waker,
    stopped: AtomicBool,
    /// [`REQUEST_TIMEOUT`], but for tests.
    timeout: Duration,
}

impl MetricsListener {
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
        let mut listener = TcpListener::bind(addr)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        Ok(MetricsListener {
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            poll: Mutex::new(Some(poll)),
            waker,
            stopped: AtomicBool::new(false),
            timeout: REQUEST_TIMEOUT,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Answers `GET` and `HEAD` requests on the calling thread until
    /// `stop`. `route` gets the path (any query string cut off) and
    /// answers it, or says there is nothing there (404). Another method on
    /// a path that `route` knows gets a 405. Runs once: a second call
    /// returns at once.
    pub fn serve(&self, route: impl Fn(&str) -> Option<Answer>) {
        let taken = (
            self.poll.lock().unwrap_or_else(|p| p.into_inner()).take(),
            self.listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let (Some(mut poll), Some(listener)) = taken else {
            return;
        };
        let mut server = Server {
            listener,
            open: BTreeMap::new(),
            next: FIRST_CONNECTION,
            timeout: self.timeout,
        };
        let mut events = Events::with_capacity(256);
        // Acquire: pairs with `stop`'s store, so a stop before this call
        // is seen here.
        while !self.stopped.load(Ordering::Acquire) {
            let wait = server.next_deadline().map_or(self.timeout, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if let Err(e) = poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "the metrics endpoint failed; it stops");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => server.accept(poll.registry()),
                    WAKE => {}
                    token => server.serve(poll.registry(), token, &route),
                }
            }
            server.expire();
        }
    }

    /// Makes `serve` return promptly; connections still open are closed.
    /// Called before `serve` started, `serve` returns at once.
    pub fn stop(&self) {
        // Release: pairs with `serve`'s load.
        self.stopped.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "could not wake the metrics endpoint");
        }
    }
}

/// One connection: reading its request, then writing its answer.
struct Conn {
    stream: TcpStream,
    /// The request head so far, then the answer to write.
    buf: Vec<u8>,
    /// With an answer: how much of it is written.
    written: Option<usize>,
    /// The answer is written and our side shut: what comes is dropped.
    closing: bool,
    deadline: Instant,
}

struct Server {
    listener: TcpListener,
    /// Open connections by number; numbers grow with time, so the first
    /// is the oldest.
    open: BTreeMap<usize, Conn>,
    next: usize,
    timeout: Duration,
}

impl Server {
    fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|c| c.deadline).min()
    }

    fn accept(&mut self, registry: &mio::Registry) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: the oldest
                    // connection makes room.
                    tracing::debug!(error = %e, "metrics endpoint failed to accept");
                    if self.open.pop_first().is_none() {
                        return;
                    }
                    continue;
                }
            };
            if self.open.len() >= MAX_CONNECTIONS {
                self.open.pop_first();
            }
            let number = self.next;
            self.next += 1;
            if let Err(e) = registry.register(&mut stream, Token(number), Interest::READABLE) {
                tracing::debug!(error = %e, "metrics connection dropped");
                continue;
            }
            let conn = Conn {
                stream,
                buf: Vec::new(),
                written: None,
                closing: false,
                deadline: Instant::now() + self.timeout,
            };
            self.open.insert(number, conn);
        }
    }

    fn serve(
        &mut self,
        registry: &mio::Registry,
        token: Token,
        route: &impl Fn(&str) -> Option<Answer>,
    ) {
        let Some(conn) = self.open.get_mut(&token.0) else {
            return;
        };
        let timeout = self.timeout;
        if conn.closing {
            // Ok(true) once the peer has closed its side, or reset it.
            if conn.discard().unwrap_or(true) {
                self.open.remove(&token.0);
            }
            return;
        }
        let done = match conn.written {
            None => conn.read(route, timeout).and_then(|answered| {
                if answered {
                    registry.reregister(&mut conn.stream, token, Interest::WRITABLE)?;
                    conn.write()
                } else {
                    Ok(false)
                }
            }),
            Some(_) => conn.write(),
        };
        match done {
            Ok(false) => {}
            Ok(true) => {
                // A lingering close: the answer is followed by our FIN,
                // and what the peer still sends (the rest of a refused
                // request) is read and dropped until it closes too, for
                // at most LINGER. Closing with its bytes unread would
                // send a reset, which can destroy the answer before the
                // peer reads it.
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.closing = true;
                conn.deadline = Instant::now() + LINGER.min(timeout);
                let drained = registry
                    .reregister(&mut conn.stream, token, Interest::READABLE)
                    .and_then(|()| conn.discard());
                if drained.unwrap_or(true) {
                    self.open.remove(&token.0);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "metrics request failed");
                self.open.remove(&token.0);
            }
        }
    }

    /// Closes the connections past their deadline.
    fn expire(&mut self) {
        let now = Instant::now();
        self.open.retain(|_, c| c.deadline > now);
    }
}

impl Conn {
    /// Reads what has arrived. Returns whether the request is complete
    /// and its answer is in `buf`.
    fn read(
        &mut self,
        route: &impl Fn(&str) -> Option<Answer>,
        timeout: Duration,
    ) -> io::Result<bool> {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Closed before a whole request came.
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.buf.len() > MAX_REQUEST_HEAD {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let too_long = || {
            encode(
                &Answer::text("431 Request Header Fields Too Large", ""),
                false,
            )
        };
        let answer = match request.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_HEAD => too_long(),
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                let target = request.path.unwrap_or_default();
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                let head_only = method == "HEAD";
                let answer = match (method, route(path)) {
                    ("GET" | "HEAD", Some(answer)) => answer,
                    (_, Some(_)) => Answer::text("405 Method Not Allowed", ""),
                    (_, None) => Answer::text("404 Not Found", "try GET /metrics\n"),
                };
                encode(&answer, head_only)
            }
            Ok(httparse::Status::Partial) if self.buf.len() <= MAX_REQUEST_HEAD => {
                return Ok(false)
            }
            Ok(httparse::Status::Partial) => too_long(),
            Err(_) => encode(&Answer::text("400 Bad Request", ""), false),
        };
        self.buf = answer;
        self.written = Some(0);
        self.deadline = Instant::now() + timeout;
        Ok(true)
    }

    /// Reads and drops what has arrived, at most [`MAX_REQUEST_HEAD`]
    /// bytes a call, so that a peer that keeps sending cannot hold the
    /// thread (it is closed at its deadline). Returns whether the peer
    /// has closed its side.
    fn discard(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 1024];
        let mut dropped = 0;
        while dropped < MAX_REQUEST_HEAD {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Writes what the peer takes. Returns whether the whole answer is
    /// written.
    fn write(&mut self) -> io::Result<bool> {
        let written = self.written.get_or_insert(0);
        while *written < self.buf.len() {
            match self.stream.write(&self.buf[*written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The bytes of `answer` (its head only if `head_only`, as for `HEAD`).
fn encode(answer: &Answer, head_only: bool) -> Vec<u8> {
    let allow = if answer.status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut bytes = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )
    .into_bytes();
    if !head_only {
        bytes.extend_from_slice(answer.body.as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CONTENT_TYPE;
    use std::net::TcpStream;

    /// A page of fixed lines, as `render` would make one.
    const PAGE: &str = "fila_records_total{outcome=\"output\"} 5\nfila_window 32\n";

    /// The tests' server timeout: far longer than any pause of a loaded
    /// machine, so that a wait on an idle connection (a reply held up
    /// behind one, a connection left to time out) takes all of it.
    const TEST_TIMEOUT: Duration = Duration::from_secs(60);

    /// What must come at once (a reply, a stop, a close to make room)
    /// comes within this: a wait on an idle connection would take four
    /// times as long.
    const PROMPT: Duration = Duration::from_secs(15);

    /// A listener serving [`PAGE`] on a thread, stopped (and checked to
    /// stop) when dropped.
    struct Server {
        listener: std::sync::Arc<MetricsListener>,
        addr: SocketAddr,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start() -> Server {
            Server::start_with(TEST_TIMEOUT)
        }

        fn start_with(timeout: Duration) -> Server {
            let mut listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            listener.timeout = timeout;
            let listener = std::sync::Arc::new(listener);
            let addr = listener.local_addr().unwrap();
            let serving = listener.clone();
            let thread = std::thread::spawn(move || {
                serving.serve(|path| {
                    (path == "/metrics").then(|| Answer::ok(CONTENT_TYPE, PAGE.to_owned()))
                })
            });
            Server {
                listener,
                addr,
                thread: Some(thread),
            }
        }

        /// Stops the server; fails unless `serve` returns within `within`.
        fn stop_within(&mut self, within: Duration) {
            let Some(thread) = self.thread.take() else {
                return;
            };
            self.listener.stop();
            let deadline = Instant::now() + within;
            while !thread.is_finished() {
                assert!(Instant::now() < deadline, "serve did not return");
                std::thread::yield_now();
            }
            thread.join().unwrap();
        }

        fn connect(&self) -> TcpStream {
            let stream = TcpStream::connect(self.addr).unwrap();
            // Well under the timeout: a reply held up behind another
            // connection fails the test instead of arriving late.
            stream.set_read_timeout(Some(PROMPT)).unwrap();
            stream
        }

        /// The whole response to `request` (its request line).
        fn ask(&self, request: &str) -> String {
            let mut stream = self.connect();
            write!(stream, "{request}\r\nHost: fila\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                self.stop_within(PROMPT);
            }
        }
    }

    fn split(response: &str) -> (&str, &str) {
        response.split_once("\r\n\r\n").expect("a response head")
    }

    #[test]
    fn get_metrics_returns_the_page() {
        let server = Server::start();
        let response = server.ask("GET /metrics HTTP/1.1");
        let (head, body) = split(&response);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(body, PAGE);
    }

    #[test]
    fn head_metrics_returns_the_head_only() {
        let server = Server::start();
        let page_len = server.ask("GET /metrics HTTP/1.1").len();
        let response = server.ask("HEAD /metrics HTTP/1.1");
        let (head, body) = split(&response);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert_eq!(body, "", "HEAD has no body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(head.len() + 4 + length, page_len, "the length GET sends");
    }

    #[test]
    fn a_query_string_is_ignored() {
        let server = Server::start();
        let response = server.ask("GET /metrics?x=1 HTTP/1.1");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert_eq!(split(&response).1, PAGE);
    }

    #[test]
    fn other_paths_are_not_found_and_other_methods_not_allowed() {
        let server = Server::start();
        for path in ["/other", "/", "/metrics/x"] {
            let response = server.ask(&format!("GET {path} HTTP/1.1"));
            assert!(
                response.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{response}"
            );
        }
        let response = server.ask("POST /metrics HTTP/1.1");
        assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
        assert!(server.ask("nonsense").starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn a_silent_client_does_not_hold_up_another_scrape() {
        let server = Server::start();
        let _silent = server.connect();
        let mut half = server.connect();
        write!(half, "GET /metr").unwrap();
        // Both are accepted first; the scrape must not wait for them.
        let response = server.ask("GET /metrics HTTP/1.1");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    #[test]
    fn stop_is_prompt_with_silent_clients_connected() {
        let mut server = Server::start();
        let mut silent = server.connect();
        // Answered after the silent client was accepted: it is open now.
        assert!(server
            .ask("GET /metrics HTTP/1.1")
            .starts_with("HTTP/1.1 200"));
        server.stop_within(PROMPT);
        // Its connection was cut, not left to time out.
        let mut rest = Vec::new();
        assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn stop_before_serve_still_stops_it() {
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.stop();
        let serving = std::thread::spawn(move || listener.serve(|_| None));
        let deadline = Instant::now() + PROMPT;
        while !serving.is_finished() {
            assert!(Instant::now() < deadline, "serve did not return");
            std::thread::yield_now();
        }
    }

    /// Reads from `stream` until it closes, or `within` passes; returns
    /// whether it closed.
    fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        stream.set_read_timeout(Some(within)).unwrap();
        let mut rest = Vec::new();
        matches!(stream.read_to_end(&mut rest), Ok(0))
    }

    #[test]
    fn idle_connections_past_the_cap_close_the_oldest_and_a_scrape_still_answers() {
        let server = Server::start();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 20)
            .map(|_| server.connect())
            .collect();
        let asked = Instant::now();
        let response = server.ask("GET /metrics HTTP/1.1");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(asked.elapsed() < PROMPT, "the scrape waited");
        // The first ones were closed to make room, by the server.
        for stream in idle.iter_mut().take(20) {
            assert!(
                closed_within(stream, PROMPT),
                "an evicted connection is open"
            );
        }
    }

    #[test]
    fn a_connection_that_says_nothing_is_closed_at_the_timeout() {
        let timeout = Duration::from_millis(200);
        let server = Server::start_with(timeout);
        let mut silent = server.connect();
        let since = Instant::now();
        assert!(closed_within(&mut silent, timeout * 20), "still open");
        assert!(since.elapsed() >= timeout, "closed before its timeout");
    }

    #[test]
    fn an_oversized_request_head_is_refused() {
        let server = Server::start();
        let mut stream = server.connect();
        let long = "x".repeat(MAX_REQUEST_HEAD * 4);
        write!(stream, "GET /metrics HTTP/1.1\r\nX: {long}").unwrap();
        // The server has answered by now; the rest of the request still
        // goes through, and the answer is still there to read (a close
        // with the request unread would have reset the connection).
        std::thread::sleep(Duration::from_millis(200));
        stream.write_all(b"\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    }
}
