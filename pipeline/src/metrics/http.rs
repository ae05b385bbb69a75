//! A small HTTP endpoint for the metrics page (`--metrics-addr`).
//!
//! Plain threads on a `TcpListener`, since fila has no async executor and
//! one scrape every few seconds needs none: one thread blocks in `accept`,
//! and each connection gets a thread of its own, so that a client that
//! connects and says nothing holds up nobody else. `stop` cuts the open
//! connections and wakes the accept at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::CONTENT_TYPE;

/// How long a connection may take to send its request, or to take the
/// response, before it is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a request head may take, in bytes.
const MAX_REQUEST_HEAD: usize = 8192;

/// A bound metrics listener. `serve` answers scrapes until `stop`.
pub struct MetricsListener {
    listener: TcpListener,
    /// The connections being answered, by number, so that `stop` can cut
    /// them; `None` once stopped.
    open: Mutex<Option<HashMap<u64, TcpStream>>>,
}

impl MetricsListener {
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
        Ok(MetricsListener {
            listener: TcpListener::bind(addr)?,
            open: Mutex::new(Some(HashMap::new())),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers `GET` and `HEAD` on `/metrics` (any query string is
    /// ignored) with `page()`, and anything else with a 404 (or a 405 for
    /// another method on `/metrics`), until `stop`. Each connection is
    /// answered on a thread of its own; this returns once they are done.
    pub fn serve(&self, page: impl Fn() -> String + Sync) {
        let page = &page;
        std::thread::scope(|s| {
            for number in 0u64.. {
                let stream = match self.listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) if self.open().is_none() => break,
                    Err(e) => {
                        // Out of file descriptors, most likely: give the
                        // open connections a moment to close.
                        tracing::warn!(error = %e, "metrics listener failed to accept");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                {
                    let mut open = self.open();
                    // Stopped: this is `stop` waking us, or a scrape too late.
                    let Some(open) = open.as_mut() else { break };
                    match stream.try_clone() {
                        Ok(clone) => open.insert(number, clone),
                        Err(e) => {
                            tracing::debug!(error = %e, "metrics connection dropped");
                            continue;
                        }
                    };
                }
                let spawned = std::thread::Builder::new()
                    .name("fila-metrics".into())
                    .spawn_scoped(s, move || {
                        if let Err(e) = answer(stream, page) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                        if let Some(open) = self.open().as_mut() {
                            open.remove(&number);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread for a metrics connection");
                    if let Some(open) = self.open().as_mut() {
                        open.remove(&number);
                    }
                }
            }
        });
    }

    /// Makes `serve` return promptly: connections still open are cut, and
    /// the blocked `accept` is woken by a connection to ourselves. Called
    /// before `serve` started, `serve` returns at its first connection.
    pub fn stop(&self) {
        let open = self.open().take();
        for stream in open.into_iter().flat_map(HashMap::into_values) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let Ok(mut addr) = self.listener.local_addr() else {
            return;
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            tracing::warn!(error = %e, %addr, "could not wake the metrics listener");
        }
    }

    fn open(&self) -> MutexGuard<'_, Option<HashMap<u64, TcpStream>>> {
        // Nothing panics while holding the lock; if it did, the map is
        // still sound.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
fn answer(mut stream: TcpStream, page: &dyn Fn() -> String) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let (method, path) = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            // Closed (or cut by `stop`) before a whole request came.
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default().to_owned();
                let target = request.path.unwrap_or_default();
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                break (method, path.to_owned());
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_REQUEST_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return respond(stream, false, "431 Request Header Fields Too Large", "", "")
            }
            Err(_) => return respond(stream, false, "400 Bad Request", "", ""),
        }
    };
    let head_only = method == "HEAD";
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/metrics") => respond(stream, head_only, "200 OK", "", &page()),
        (_, "/metrics") => respond(
            stream,
            head_only,
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "",
        ),
        _ => respond(stream, head_only, "404 Not Found", "", "try GET /metrics\n"),
    }
}

/// Writes a response (its head only if `head_only`, as for `HEAD`) and
/// closes the connection.
fn respond(
    mut stream: TcpStream,
    head_only: bool,
    status: &str,
    extra_headers: &str,
    body: &str,
) -> io::Result<()> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A page of fixed lines, as `render` would make one.
    const PAGE: &str = "fila_records_total{outcome=\"output\"} 5\nfila_window 32\n";

    /// A listener serving [`PAGE`] on a thread, stopped (and checked to
    /// stop) when dropped.
    struct Server {
        listener: std::sync::Arc<MetricsListener>,
        addr: SocketAddr,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start() -> Server {
            let listener =
                std::sync::Arc::new(MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap());
            let addr = listener.local_addr().unwrap();
            let serving = listener.clone();
            let thread = std::thread::spawn(move || serving.serve(|| PAGE.to_owned()));
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
            // Well under REQUEST_TIMEOUT: a reply held up behind another
            // connection fails the test instead of arriving late.
            stream.set_read_timeout(Some(REQUEST_TIMEOUT / 4)).unwrap();
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
                self.stop_within(REQUEST_TIMEOUT / 4);
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
        server.stop_within(REQUEST_TIMEOUT / 4);
        // Its connection was cut, not left to time out.
        let mut rest = Vec::new();
        assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn stop_before_serve_still_stops_it() {
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.stop();
        let serving = std::thread::spawn(move || listener.serve(String::new));
        let deadline = Instant::now() + REQUEST_TIMEOUT / 4;
        while !serving.is_finished() {
            assert!(Instant::now() < deadline, "serve did not return");
            std::thread::yield_now();
        }
    }
}
