//! Live counters of a run, and a small HTTP endpoint that serves them in
//! the Prometheus text format (`--metrics-addr`).
//!
//! The page is encoded by `prometheus-client`, which escapes help text and
//! label values. The endpoint is plain threads on a `TcpListener`, since
//! fila has no async executor and one scrape every few seconds needs none:
//! one thread blocks in `accept`, and each connection gets a thread of its
//! own, so that a client that connects and says nothing holds up nobody
//! else. `stop` cuts the open connections and wakes the accept at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fila_connectors::Uncommitted;
use fila_runtime::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds, in seconds, of the latency histogram's buckets: 1, 2.5
/// and 5 per decade from 10 µs to 10 s. A record takes tens of
/// microseconds through an idle pipeline and up to seconds behind a full
/// window on a loaded one; above 10 s only `+Inf` counts it.
pub const LATENCY_BUCKETS: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
];

/// Counters the driver's sink thread bumps as records finish.
#[derive(Debug)]
pub struct Live {
    pub messages: AtomicU64,
    pub outputs: AtomicU64,
    pub dead_letters: AtomicU64,
    pub panicked: AtomicU64,
    /// Latency of each output, in seconds, as the run's report measures it:
    /// from when the record became available to fila (for the burst
    /// generator, the start of the burst) until its last stage emitted the
    /// output. Buckets are [`LATENCY_BUCKETS`].
    pub latency: Histogram,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            messages: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Live {
    /// Records the latency of one output.
    pub fn record_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }
}

/// The metrics page for `stats`, `live`, and (for a source that commits)
/// the records not yet committed.
pub fn render(stats: &Stats, live: &Live, uncommitted: Option<Uncommitted>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Page {
        stats: stats.clone(),
        outputs: live.outputs.load(Relaxed),
        dead_letters: live.dead_letters.load(Relaxed),
        panicked: live.panicked.load(Relaxed),
        latency: live.latency.clone(),
        uncommitted,
    }));
    let mut page = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut page, &registry)
        .expect("writing to a String cannot fail");
    page
}

/// The `Content-Type` of the page `render` makes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One scrape's values. The registry lives for one scrape only, so the
/// collector owns a copy of what it encodes.
#[derive(Debug)]
struct Page {
    stats: Stats,
    outputs: u64,
    dead_letters: u64,
    panicked: u64,
    latency: Histogram,
    uncommitted: Option<Uncommitted>,
}

impl Collector for Page {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.stats;
        // Counter names get their `_total` from the encoder.
        labeled(
            &mut e,
            "fila_records",
            None,
            "Records finished, by outcome.",
            "outcome",
            [
                ("output".to_owned(), ConstCounter::new(self.outputs)),
                (
                    "dead_letter".to_owned(),
                    ConstCounter::new(self.dead_letters),
                ),
            ],
        )?;
        one(
            &mut e,
            "fila_records_panicked",
            "Dead letters whose stage panicked.",
            ConstCounter::new(self.panicked),
        )?;
        self.latency.encode(e.encode_descriptor(
            "fila_record_latency",
            "Latency of each record that produced an output: from when it became available to fila until its output was emitted.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)?;
        one(
            &mut e,
            "fila_window",
            "The admission window W.",
            ConstGauge::new(stats.window as u64),
        )?;
        one(
            &mut e,
            "fila_in_flight",
            "Window slots taken: records admitted and not yet finished, plus one while the source waits for input.",
            ConstGauge::new(stats.in_flight as u64),
        )?;
        one(
            &mut e,
            "fila_max_in_flight",
            "The most records ever in flight at once.",
            ConstGauge::new(stats.max_in_flight as u64),
        )?;
        if let Some(uncommitted) = self.uncommitted {
            one(
                &mut e,
                "fila_uncommitted",
                "Records read and not yet covered by a commit: what a crash would replay.",
                ConstGauge::new(uncommitted.records),
            )?;
            one(
                &mut e,
                "fila_uncommitted_bytes",
                "Bytes of the records read and not yet covered by a commit.",
                ConstGauge::new(uncommitted.bytes),
            )?;
        }
        let per_worker = |f: fn(&fila_runtime::WorkerStats) -> u64| {
            stats
                .workers
                .iter()
                .enumerate()
                .map(move |(i, w)| (i.to_string(), ConstCounter::new(f(w))))
        };
        labeled(
            &mut e,
            "fila_worker_tasks",
            None,
            "Tasks run, per worker.",
            "worker",
            per_worker(|w| w.tasks_run),
        )?;
        labeled(
            &mut e,
            "fila_worker_stolen",
            None,
            "Tasks stolen from another worker, per worker.",
            "worker",
            per_worker(|w| w.tasks_stolen),
        )?;
        labeled(
            &mut e,
            "fila_worker_parks",
            None,
            "Times a worker parked for lack of work.",
            "worker",
            per_worker(|w| w.parks),
        )?;
        labeled(
            &mut e,
            "fila_worker_busy",
            Some(Unit::Seconds),
            "Time a worker spent awake, running tasks or looking for them, rather than parked.",
            "worker",
            stats
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| (i.to_string(), ConstCounter::new(w.busy.as_secs_f64()))),
        )
    }
}

/// Encodes a metric without labels.
fn one<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes a metric with one sample per value of `label`. The encoder
/// escapes the values.
fn labeled<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    unit: Option<Unit>,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some(metric_type) = samples.peek().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (value, metric) in samples {
        metric.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

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

    fn stats() -> Stats {
        Stats {
            workers: vec![
                fila_runtime::WorkerStats {
                    busy: Duration::from_millis(1500),
                    ..Default::default()
                },
                fila_runtime::WorkerStats {
                    tasks_run: 7,
                    ..Default::default()
                },
            ],
            window: 32,
            in_flight: 3,
            max_in_flight: 30,
            ..Default::default()
        }
    }

    fn has_line(page: &str, line: &str) {
        assert!(
            page.lines().any(|l| l == line),
            "missing {line:?} in\n{page}"
        );
    }

    #[test]
    fn page_has_every_metric_with_its_value() {
        let stats = stats();
        let live = Live::default();
        live.outputs.store(5, Relaxed);
        live.dead_letters.store(2, Relaxed);
        let uncommitted = Uncommitted {
            records: 4,
            bytes: 400,
        };
        let page = render(&stats, &live, Some(uncommitted));
        assert!(!render(&stats, &live, None).contains("fila_uncommitted"));
        for line in [
            "fila_records_total{outcome=\"output\"} 5",
            "fila_records_total{outcome=\"dead_letter\"} 2",
            "fila_records_panicked_total 0",
            "fila_window 32",
            "fila_in_flight 3",
            "fila_max_in_flight 30",
            "fila_uncommitted 4",
            "fila_uncommitted_bytes 400",
            "fila_worker_tasks_total{worker=\"1\"} 7",
            "# TYPE fila_worker_parks_total counter",
            "# TYPE fila_worker_busy_seconds_total counter",
            "fila_worker_busy_seconds_total{worker=\"0\"} 1.5",
            "fila_worker_busy_seconds_total{worker=\"1\"} 0.0",
            "# TYPE fila_record_latency_seconds histogram",
        ] {
            has_line(&page, line);
        }
    }

    #[test]
    fn latency_histogram_counts_every_recorded_latency_in_its_bucket() {
        let live = Live::default();
        for micros in [20, 30, 700, 3_000_000] {
            live.record_latency(Duration::from_micros(micros));
        }
        let page = render(&stats(), &live, None);
        for line in [
            "fila_record_latency_seconds_bucket{le=\"1e-05\"} 0",
            "fila_record_latency_seconds_bucket{le=\"2.5e-05\"} 1",
            "fila_record_latency_seconds_bucket{le=\"5e-05\"} 2",
            "fila_record_latency_seconds_bucket{le=\"0.001\"} 3",
            "fila_record_latency_seconds_bucket{le=\"2.5\"} 3",
            "fila_record_latency_seconds_bucket{le=\"5\"} 4",
            "fila_record_latency_seconds_bucket{le=\"+Inf\"} 4",
            "fila_record_latency_seconds_count 4",
        ] {
            has_line(&page, line);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct Odd;
        impl Collector for Odd {
            fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                labeled(
                    &mut e,
                    "odd",
                    None,
                    "A label value with a quote, a backslash and a newline.",
                    "name",
                    [("a\"b\\c\nd".to_owned(), ConstCounter::new(1u64))],
                )
            }
        }
        registry.register_collector(Box::new(Odd));
        let mut page = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut page, &registry).unwrap();
        has_line(&page, r#"odd_total{name="a\"b\\c\nd"} 1"#);
    }

    #[test]
    fn busy_time_is_reported_for_every_worker_after_work_ran() {
        let rt = fila_runtime::Runtime::builder()
            .workers(fila_runtime::Workers::Count(3.try_into().unwrap()))
            .pin(false)
            .build()
            .unwrap();
        for _ in 0..100 {
            rt.admit(|cx| cx.spawn(|_| {}), |_| {}).unwrap();
        }
        let page = render(&rt.shutdown(), &Live::default(), None);
        for worker in 0..3 {
            let prefix = format!("fila_worker_busy_seconds_total{{worker=\"{worker}\"}} ");
            let busy: f64 = page
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no busy time for worker {worker} in\n{page}"))
                .parse()
                .unwrap();
            assert!(busy > 0.0, "worker {worker} busy {busy} in\n{page}");
        }
    }

    /// A listener serving `render` of fixed values on a thread, stopped
    /// (and checked to stop) when dropped.
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
            let thread = std::thread::spawn(move || {
                let live = Live::default();
                live.outputs.store(5, Relaxed);
                serving.serve(|| render(&stats(), &live, None));
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
        has_line(body, "fila_records_total{outcome=\"output\"} 5");
        has_line(body, "fila_window 32");
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
        has_line(split(&response).1, "fila_window 32");
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
