//! The health checks over the real endpoint, with the driver running a
//! job whose stage never returns: `/healthz` fails with the reason once
//! the bound passes, and `/readyz` follows the run from start to drain.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fila_pipeline::counters::Counters;
use fila_pipeline::dataflow::Job;
use fila_pipeline::driver::Driver;
use fila_pipeline::health::Health;
use fila_pipeline::metrics::MetricsListener;
use fila_runtime::{Runtime, Workers};
use support::{numbered, Collect, Records};

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn healthz_fails_while_every_worker_is_stuck_in_a_stage_and_recovers() {
    const STUCK_AFTER: Duration = Duration::from_millis(500);
    let rt = Runtime::builder()
        .workers(Workers::Count(2.try_into().unwrap()))
        .pin(false)
        .window(4)
        .build()
        .unwrap();
    let counters = Counters::default();
    let health = Health::new(&rt, &counters, STUCK_AFTER);
    let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Records 3 and 4 hold both workers until released: a stage that
    // does not return.
    let released = Arc::new(AtomicBool::new(false));
    let held = released.clone();
    let job = Arc::new(
        Job::new("stuck")
            .decode(|input| Ok(input.payload().to_vec()))
            .map("hold", move |b: Vec<u8>| {
                if b == b"3" || b == b"4" {
                    while !held.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Ok(b)
            })
            .sink(|b: &Vec<u8>| b.clone()),
    );
    let mut source = Records::new(numbered(50));
    let sink = Collect::default();
    std::thread::scope(|s| {
        s.spawn(|| listener.serve(|path| health.answer(path)));
        assert!(
            get(&addr, "/readyz").contains("starting"),
            "not ready before the run reads"
        );
        let run = s.spawn(|| {
            Driver::new()
                .counters(&counters)
                .run(&rt, job, &mut source, Box::new(sink.clone()))
        });
        // Live at first: records finish until both workers are held.
        assert!(get(&addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = loop {
            let answer = get(&addr, "/healthz");
            if answer.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            failed.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{failed}"
        );
        assert!(failed.contains("a stage is not returning"), "{failed}");
        // Still reading as far as readiness goes: the source is fine.
        assert!(get(&addr, "/readyz").starts_with("HTTP/1.1 200 OK"));
        released.store(true, Ordering::Relaxed);
        let summary = run.join().unwrap().unwrap();
        assert_eq!(summary.outputs, 50);
        assert!(get(&addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        let drained = get(&addr, "/readyz");
        assert!(drained.contains("stopping"), "{drained}");
        listener.stop();
    });
    rt.shutdown();
}
