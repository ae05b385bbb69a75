//! Live counters of a run, and a small HTTP endpoint that serves them in
//! the Prometheus text format (`--metrics-addr`). A plain thread on a
//! `TcpListener`: fila has no async executor, and one scrape every few
//! seconds needs none.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use fila_runtime::Stats;

/// Counters the driver's sink thread bumps as records finish.
#[derive(Debug, Default)]
pub struct Live {
    pub messages: AtomicU64,
    pub outputs: AtomicU64,
    pub dead_letters: AtomicU64,
    pub panicked: AtomicU64,
}

/// The metrics page for `stats`, `live`, and (for a source that commits)
/// the records not yet committed.
pub fn render(stats: &Stats, live: &Live, uncommitted: Option<u64>) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(s, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| [(String::new(), v)];
    metric(
        "fila_records_total",
        "counter",
        "Records finished, by outcome.",
        &[
            ("{outcome=\"output\"}".into(), live.outputs.load(Relaxed)),
            (
                "{outcome=\"dead_letter\"}".into(),
                live.dead_letters.load(Relaxed),
            ),
        ],
    );
    metric(
        "fila_records_panicked_total",
        "counter",
        "Dead letters whose stage panicked.",
        &one(live.panicked.load(Relaxed)),
    );
    metric(
        "fila_window",
        "gauge",
        "The admission window W.",
        &one(stats.window as u64),
    );
    metric(
        "fila_in_flight",
        "gauge",
        "Window slots taken: records admitted and not yet finished, plus one while the source waits for input.",
        &one(stats.in_flight as u64),
    );
    metric(
        "fila_max_in_flight",
        "gauge",
        "The most records ever in flight at once.",
        &one(stats.max_in_flight as u64),
    );
    if let Some(uncommitted) = uncommitted {
        metric(
            "fila_uncommitted",
            "gauge",
            "Records read and not yet covered by a commit.",
            &one(uncommitted),
        );
    }
    let per_worker = |f: fn(&fila_runtime::WorkerStats) -> u64| -> Vec<(String, u64)> {
        stats
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{{worker=\"{i}\"}}"), f(w)))
            .collect()
    };
    metric(
        "fila_worker_tasks_total",
        "counter",
        "Tasks run, per worker.",
        &per_worker(|w| w.tasks_run),
    );
    metric(
        "fila_worker_stolen_total",
        "counter",
        "Tasks stolen from another worker, per worker.",
        &per_worker(|w| w.tasks_stolen),
    );
    metric(
        "fila_worker_parks_total",
        "counter",
        "Times a worker parked for lack of work.",
        &per_worker(|w| w.parks),
    );
    s
}

/// A bound metrics listener. `serve` answers scrapes until `stop` is set.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsListener> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking so that `serve` notices `stop` within a poll.
        listener.set_nonblocking(true)?;
        Ok(MetricsListener { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers `GET /metrics` (and `GET /`) with `page()` until `stop`.
    pub fn serve(&self, stop: &AtomicBool, page: impl Fn() -> String) {
        while !stop.load(Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, &page) {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener failed to accept");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn answer(mut stream: TcpStream, page: &impl Fn() -> String) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Read the request head (bounded): only its first line matters.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let first = String::from_utf8_lossy(&head);
    let mut parts = first.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics" | "/")) => ("200 OK", page()),
        _ => ("404 Not Found", "try GET /metrics\n".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_every_metric_with_its_value() {
        let stats = Stats {
            workers: vec![
                Default::default(),
                fila_runtime::WorkerStats {
                    tasks_run: 7,
                    ..Default::default()
                },
            ],
            window: 32,
            in_flight: 3,
            max_in_flight: 30,
            ..Default::default()
        };
        let live = Live::default();
        live.outputs.store(5, Relaxed);
        live.dead_letters.store(2, Relaxed);
        let page = render(&stats, &live, Some(4));
        assert!(!render(&stats, &live, None).contains("fila_uncommitted"));
        for line in [
            "fila_records_total{outcome=\"output\"} 5",
            "fila_records_total{outcome=\"dead_letter\"} 2",
            "fila_window 32",
            "fila_in_flight 3",
            "fila_max_in_flight 30",
            "fila_uncommitted 4",
            "fila_worker_tasks_total{worker=\"1\"} 7",
            "# TYPE fila_worker_parks_total counter",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "missing {line:?} in\n{page}"
            );
        }
    }
}
