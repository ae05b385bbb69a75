//! An idle runtime must park its workers, not spin. Its own test binary, so
//! no other test's threads are counted in the process's CPU time.

use fila_runtime::{Runtime, Workers};

fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[test]
fn idle_runtime_uses_under_a_tenth_of_a_core() {
    let rt = Runtime::builder()
        .workers(Workers::Logical)
        .build()
        .unwrap();
    // Some work first, so the workers have been awake and must go back to sleep.
    for _ in 0..1_000 {
        rt.admit(|cx| cx.spawn(|_| {}), |_| {}).unwrap();
    }
    while rt.in_flight() > 0 {
        std::thread::yield_now();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let busy_before = rt.stats().busy();
    let before = process_cpu_seconds();
    let wall = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = process_cpu_seconds() - before;
    let share = used / wall.elapsed().as_secs_f64();
    let busy_idle = rt.stats().busy() - busy_before;
    let stats = rt.shutdown();
    assert!(
        share < 0.10,
        "idle runtime used {:.1}% of one core",
        share * 100.0
    );
    assert!(
        stats.parks() >= stats.workers.len() as u64,
        "workers never parked: {stats:?}"
    );
    // Parked time is not busy time.
    assert!(
        busy_idle.as_secs_f64() < 0.10 * wall.elapsed().as_secs_f64(),
        "idle workers reported {busy_idle:?} busy: {stats:?}"
    );
}
