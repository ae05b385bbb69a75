//! The `fila` command as a user runs it: the binary, its flags, its report.

use std::io::{BufRead, Write};
use std::process::{Command, Output, Stdio};

use fila_pipeline::reference::{fib, FibRecord};
use serde_json::Value;

fn fila(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(args)
        .output()
        .expect("fila runs")
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(key)
            .unwrap_or_else(|| panic!("report lacks {path:?}: {v}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {v}"))
}

#[test]
fn run_report_json_has_every_field_and_they_agree() {
    let out = fila(&[
        "run",
        "--burst",
        "300",
        "--stages",
        "5,10,22,10,5",
        "--workers",
        "2",
        "--window",
        "4",
        "--report",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();

    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = [
        "messages",
        "workers",
        "window",
        "elapsed_s",
        "throughput_msgs_per_s",
        "latency_ms",
        "ideal",
        "efficiency",
        "latency_ratio",
    ];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);

    assert_eq!(f(&r, &["messages"]), 300.0);
    assert_eq!(f(&r, &["workers"]), 2.0);
    assert_eq!(f(&r, &["window"]), 4.0);
    let elapsed = f(&r, &["elapsed_s"]);
    let throughput = f(&r, &["throughput_msgs_per_s"]);
    assert!(elapsed > 0.0);
    assert!((throughput - 300.0 / elapsed).abs() / throughput < 1e-9);

    let (mean, p50, p99, max) = (
        f(&r, &["latency_ms", "mean"]),
        f(&r, &["latency_ms", "p50"]),
        f(&r, &["latency_ms", "p99"]),
        f(&r, &["latency_ms", "max"]),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    assert!(mean <= max && mean > 0.0);
    // No message can finish after the whole burst did.
    assert!(
        max <= elapsed * 1e3 * 1.001 + 1.0,
        "max {max} ms vs elapsed {elapsed} s"
    );

    let w = f(&r, &["ideal", "work_per_message_ms"]);
    let ideal_tp = f(&r, &["ideal", "throughput_msgs_per_s"]);
    let ideal_mean = f(&r, &["ideal", "mean_latency_ms"]);
    let spread = f(&r, &["ideal", "calibration_spread"]);
    assert!(w > 0.0 && spread >= 0.0);
    assert!(
        (ideal_tp - 2.0 / (w / 1e3)).abs() / ideal_tp < 1e-6,
        "ideal throughput is P/w"
    );
    // Ideal mean for N=300, P=2: w * mean(i/2 + 1) = w * 75.5.
    assert!(
        (ideal_mean - w * 75.5).abs() / ideal_mean < 1e-6,
        "{ideal_mean} vs {w}"
    );
    assert!((f(&r, &["efficiency"]) - throughput / ideal_tp).abs() < 1e-9);
    assert!((f(&r, &["latency_ratio"]) - mean / ideal_mean).abs() < 1e-9);
}

#[test]
fn text_report_is_the_default() {
    let out = fila(&["run", "--burst", "20", "--stages", "1,2,3,2,1"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("20 messages"), "{text}");
    assert!(
        text.contains("efficiency") && text.contains("latency ratio"),
        "{text}"
    );
}

#[test]
fn stdin_records_come_out_on_stdout_with_fib_results_and_bad_lines_are_reported() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args([
            "run", "--source", "stdin", "--sink", "stdout", "--report", "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = [
        r#"{"id": 1, "stage1": 1, "stage2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "timestamp": 10}"#,
        "this is not json",
        r#"{"id": 2, "stage1": 10, "stage2": 20, "stage3": 25, "stage4": 20, "stage5": 10, "timestamp": 11}"#,
        r#"{"id": 3, "stage1": 1, "timestamp": 12}"#,
        r#"{"id": 4, "stage1": 6, "stage2": 7, "stage3": 8, "stage4": 9, "stage5": 0, "timestamp": 13}"#,
    ];
    child
        .stdin
        .take()
        .unwrap()
        .write_all((input.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let mut records: Vec<FibRecord> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| r.id);
    assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 4]);
    for r in &records {
        let expected = r.stages().map(|n| Some(fib(n)));
        assert_eq!(r.fibs(), expected, "record {}", r.id);
    }
    assert_eq!(records[0].timestamp, 10);

    assert!(stderr.contains("line 2:"), "bad line 2 not named: {stderr}");
    assert!(
        stderr.contains("line 4:") && stderr.contains("missing field"),
        "{stderr}"
    );
    // The report went to stderr because the records own stdout.
    let report_line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("JSON report on stderr");
    let report: Value = serde_json::from_str(report_line).unwrap();
    assert_eq!(report["messages"], 5);
    assert!(report.get("ideal").is_none(), "no ideal without a burst");
}

/// A heavy record first and light ones after: on several workers the
/// light ones finish first, and `--ordered` still writes them in input
/// order.
#[test]
fn ordered_writes_stdin_results_in_input_order() {
    let mut input = String::new();
    for id in 0..24u64 {
        let heavy = if id % 8 == 0 { 27 } else { 1 };
        input.push_str(&format!(
            "{{\"id\":{id},\"stage1\":{heavy},\"stage2\":1,\"stage3\":1,\"stage4\":1,\"stage5\":1,\"timestamp\":0}}\n"
        ));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args([
            "run",
            "--source",
            "stdin",
            "--ordered",
            "--workers",
            "3",
            "--no-pin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<FibRecord>(l).unwrap().id)
        .collect();
    assert_eq!(ids, (0..24).collect::<Vec<_>>());
}

#[test]
fn max_stage_moves_the_cap_and_records_above_it_are_dead_lettered_naming_it() {
    let lines = [
        r#"{"id":1,"stage1":1,"stage2":2,"stage3":3,"stage4":4,"stage5":5,"timestamp":0}"#,
        r#"{"id":2,"stage1":1,"stage2":2,"stage3":9,"stage4":4,"stage5":5,"timestamp":0}"#,
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fila"))
        .args([
            "run",
            "--source",
            "stdin",
            "--max-stage",
            "8",
            "--workers",
            "2",
            "--no-pin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", lines.join("\n")).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ids: Vec<u64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<FibRecord>(l).unwrap().id)
        .collect();
    assert_eq!(ids, [1]);
    assert!(
        stderr.contains("line 2: stage3 = 9 is above the maximum 8 (--max-stage)"),
        "{stderr}"
    );
}

/// The sink's writes are a tick apart at the soonest: with a 10 s tick,
/// a first record is written without waiting the tick, and a second,
/// sent once the first is out, only a tick after the first write.
#[test]
fn sink_tick_sets_the_least_time_between_writes() {
    let tick = std::time::Duration::from_secs(10);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--source", "stdin", "--sink-tick", "10s", "--no-pin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    let mut line = String::new();
    for id in [7, 8] {
        writeln!(stdin, "{}", record_line(id, 3)).unwrap();
        stdin.flush().unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        ids.push((
            serde_json::from_str::<FibRecord>(&line).unwrap().id,
            started.elapsed(),
        ));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let (first, second) = (ids[0], ids[1]);
    assert_eq!((first.0, second.0), (7, 8));
    assert!(
        first.1 < tick,
        "the first write waits for nothing: {first:?}"
    );
    assert!(second.1 - first.1 >= tick / 2, "{ids:?}");
}

/// `fila run --source stdin` with a 1 ms tick and the given linger; its
/// stdin stays open.
fn lingering_run(linger: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--source", "stdin", "--no-pin", "--workers", "2"])
        .args(["--sink-tick", "1ms", "--sink-linger", linger])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn record_line(id: u64, stage3: u64) -> String {
    format!(
        r#"{{"id":{id},"stage1":1,"stage2":2,"stage3":{stage3},"stage4":4,"stage5":5,"timestamp":0}}"#
    )
}

/// A small batch waits out the linger while a record is still running
/// (fib(45) takes seconds, several times the linger), so the light
/// record's result is written a linger after it finished, ahead of the
/// heavy one's. The heavy record goes in first, so that it is in flight
/// whenever the light one finishes (the other way round, the light one
/// could finish before the heavy one is read, and go at once as a lone
/// record).
#[test]
fn sink_linger_holds_a_small_batch_while_records_are_in_flight() {
    let mut child = lingering_run("500ms");
    let mut stdin = child.stdin.take().unwrap();
    let started = std::time::Instant::now();
    writeln!(stdin, "{}\n{}", record_line(9, 45), record_line(8, 3)).unwrap();
    stdin.flush().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let elapsed = started.elapsed();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let record: FibRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(record.id, 8);
    assert!(
        elapsed >= std::time::Duration::from_millis(500),
        "{elapsed:?}"
    );
}

/// A lone record does not wait for results that are not coming: with
/// nothing else in flight its batch goes at once, not after the
/// linger (a minute here, which would fail the test).
#[test]
fn sink_linger_does_not_hold_a_lone_record() {
    let mut child = lingering_run("60s");
    let mut stdin = child.stdin.take().unwrap();
    let started = std::time::Instant::now();
    writeln!(stdin, "{}", record_line(7, 3)).unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let elapsed = started.elapsed();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let record: FibRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(record.id, 7);
    assert!(elapsed < std::time::Duration::from_secs(60), "{elapsed:?}");
}

#[test]
fn wrong_flags_exit_2_with_a_clear_message() {
    for (args, needle) in [
        (&["run", "--window", "0"][..], "window"),
        (&["run", "--stages", "1,2,3"], "expected 5"),
        (&["run", "--stages", "1,2,3,4,46"], "above the maximum 45"),
        (
            &["run", "--max-stage", "9", "--stages", "1,2,10,4,5"],
            "above the maximum 9",
        ),
        (&["run", "--workers", "lots"], "physical"),
        (&["run", "--burst", "0"], "--burst"),
        (&["run", "--sink-tick", "0"], "above zero"),
        (&["run", "--sink-tick", "soon"], "expected a duration"),
        (&["run", "--sink-linger", "0"], "above zero"),
        (&["run", "--report", "xml"], "xml"),
        (&["run", "--exactly-once"], "needs --source kafka"),
        (
            &[
                "run",
                "--source",
                "kafka",
                "--exactly-once",
                "--commit-interval",
                "6s",
            ],
            "at most 5s, got 6s",
        ),
        (&["run", "--frobnicate"], "--frobnicate"),
        (&["bogus"], "bogus"),
    ] {
        let out = fila(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unreachable_broker_is_a_clear_error_naming_the_address() {
    // Nothing listens on port 1 of loopback: connecting fails at once.
    for args in [
        &["run", "--source", "kafka", "--brokers", "127.0.0.1:1"][..],
        &["load", "--brokers", "127.0.0.1:1", "--burst", "1"],
    ] {
        let out = fila(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("127.0.0.1:1") && stderr.contains("cannot connect"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// GETs `path` from `addr` and returns the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_endpoint_serves_live_counters_while_running() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args([
            "run",
            "--source",
            "stdin",
            "--sink",
            "none",
            "--metrics-addr",
            "127.0.0.1:0",
            "--window",
            "5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("fila: metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address on stderr: {first:?}"))
        .to_owned();

    let mut stdin = child.stdin.take().unwrap();
    for id in 0..3 {
        writeln!(stdin, r#"{{"id": {id}, "stage1": 1, "stage2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "timestamp": 0}}"#).unwrap();
    }
    writeln!(stdin, "not json").unwrap();
    stdin.flush().unwrap();

    // The run is still going (stdin is open): poll until all four are in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let page = loop {
        let page = http_get(&addr, "/metrics");
        if page.contains("fila_records_total{outcome=\"dead_letter\"} 1")
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    for line in [
        "fila_records_total{outcome=\"output\"} 3",
        "fila_records_total{outcome=\"dead_letter\"} 1",
        "fila_window 5",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "missing {line:?} in\n{page}"
        );
    }
    // Only the source's own reserved slot may still be taken, while it
    // waits on stdin; a stdin source commits nothing, so no such gauge.
    assert!(
        page.lines()
            .any(|l| l == "fila_in_flight 0" || l == "fila_in_flight 1"),
        "{page}"
    );
    assert!(!page.contains("fila_uncommitted"), "{page}");
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));

    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn metrics_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = fila(&["run", "--burst", "1", "--metrics-addr", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("metrics"),
        "{stderr}"
    );
}

/// A field of `/proc/<pid>/status`, like `Threads` or `VmHWM` (in kB).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

/// The metrics address `fila run --metrics-addr 127.0.0.1:0` prints first.
fn metrics_address(stderr: &mut impl std::io::BufRead) -> String {
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    first
        .trim()
        .strip_prefix("fila: metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address on stderr: {first:?}"))
        .to_owned()
}

/// A line far over the size cap is not read whole: it is dead-lettered
/// with its reason, the records around it are processed, and the peak
/// memory grows by about the cap (the part of the line kept while reading
/// it), not by the line.
#[test]
fn a_200_mb_line_on_stdin_is_dead_lettered_and_memory_stays_near_the_cap() {
    use std::io::BufRead;
    const CAP: u64 = 8 << 20;
    const LINE: usize = 200 << 20;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--source", "stdin", "--sink", "stdout", "--no-pin"])
        .args(["--max-record-bytes", "8MiB", "--sink-tick", "1ms"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let record = |id| {
        format!(
            r#"{{"id": {id}, "stage1": 1, "stage2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "timestamp": 0}}"#
        )
    };
    let (first, last) = (record(1), record(2));
    let writer = std::thread::spawn(move || {
        writeln!(stdin, "{first}").unwrap();
        stdin.flush().unwrap();
        gone.recv().unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..LINE / chunk.len() {
            stdin.write_all(&chunk).unwrap();
        }
        writeln!(stdin).unwrap();
        writeln!(stdin, "{last}").unwrap();
        stdin.flush().unwrap();
        // Held open until the test has measured.
        gone.recv().unwrap();
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut output = String::new();
    stdout.read_line(&mut output).unwrap();
    assert!(output.contains(r#""id":1"#), "{output}");
    let before = proc_status(pid, "VmHWM");
    go.send(()).unwrap();
    output.clear();
    stdout.read_line(&mut output).unwrap();
    assert!(output.contains(r#""id":2"#), "{output}");
    let after = proc_status(pid, "VmHWM");
    go.send(()).unwrap();
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("record of 209715200 bytes is over the 8MiB cap (--max-record-bytes)"),
        "{stderr}"
    );
    assert!(stderr.contains("1 bad record(s) skipped"), "{stderr}");
    let grew = (after.saturating_sub(before)) << 10;
    eprintln!("peak memory {before} kB before the line, {after} kB after it");
    // The kept part of the line is one buffer of the cap; the line itself
    // is 25 times the cap. The constant is the allocator's slack.
    assert!(
        grew <= CAP + (8 << 20),
        "peak memory grew by {grew} bytes for a {LINE}-byte line (cap {CAP})"
    );
}

/// `fila run --source stdin` serving metrics on a free port, and that
/// port's address.
fn stdin_run_with_metrics() -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--source", "stdin", "--sink", "none", "--no-pin"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr = metrics_address(&mut stderr);
    (child, addr)
}

/// Thousands of idle connections to the metrics endpoint: the endpoint
/// keeps at most its cap of them open, on its one thread, so fila's thread
/// count does not move, its memory barely does, and a scrape made while
/// they are all connected is answered.
#[test]
fn five_thousand_idle_connections_leave_threads_and_memory_bounded() {
    use std::io::Read;
    let (mut child, addr) = stdin_run_with_metrics();
    let pid = child.id();
    // Counted once the run reads its input: its driver's threads have
    // started by then (the endpoint answers from before they do).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !http_get(&addr, "/readyz").starts_with("HTTP/1.1 200 OK") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(http_get(&addr, "/metrics").starts_with("HTTP/1.1 200 OK"));
    let (threads, rss) = (proc_status(pid, "Threads"), proc_status(pid, "VmRSS"));
    let idle: Vec<std::net::TcpStream> = (0..5_000)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let asked = std::time::Instant::now();
    let page = http_get(&addr, "/metrics");
    let took = asked.elapsed();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    let (threads_after, rss_after) = (proc_status(pid, "Threads"), proc_status(pid, "VmRSS"));
    eprintln!(
        "with 5000 idle connections: threads {threads} -> {threads_after}, \
         RSS {rss} kB -> {rss_after} kB, a scrape answered in {took:?}"
    );
    assert_eq!(threads_after, threads, "the endpoint started threads");
    // At most 128 connections open, each with an 8 KiB head buffer at
    // most: about 1 MiB, with room for the allocator.
    assert!(
        rss_after <= rss + 8 * 1024,
        "RSS grew from {rss} kB to {rss_after} kB"
    );
    // Most were closed by fila to make room: reading them ends.
    let closed = idle
        .iter()
        .take(100)
        .filter(|s| {
            let mut s = *s;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            // End of stream or a reset is closed; a read that times out
            // is a connection still open.
            match s.read(&mut [0; 16]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert_eq!(closed, 100, "the oldest connections were not closed");
    drop(idle);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// The health checks on a stdin run: live and ready while it reads.
#[test]
fn healthz_and_readyz_answer_ok_while_reading() {
    let (mut child, addr) = stdin_run_with_metrics();
    // Ready once the run reads; the endpoint answers from before that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ready = loop {
        let answer = http_get(&addr, "/readyz");
        if answer.starts_with("HTTP/1.1 200 OK") || std::time::Instant::now() > deadline {
            break answer;
        }
        assert!(answer.contains("starting"), "{answer}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(ready.ends_with("\r\n\r\nok\n"), "{ready}");
    let live = http_get(&addr, "/healthz");
    assert!(live.starts_with("HTTP/1.1 200 OK"), "{live}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
