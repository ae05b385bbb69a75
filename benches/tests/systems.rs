//! The compared systems are correct before they are fast: on a small burst,
//! each finishes every message exactly once (`BurstTimes::from_finished`
//! refuses a repeat or a loss; its unit tests show it can), having run every
//! stage of it (the checksums), and the burst table prints what it promises.

use fila_benches::{checksum, systems, Message};
use serde_json::Value;

const MESSAGE: Message = [3, 5, 8, 5, 3];

#[test]
fn every_system_runs_every_stage_of_every_message_exactly_once() {
    let expected = checksum(&MESSAGE);
    for (system, times) in [
        ("fila, window 4", systems::fila(2, 4, MESSAGE, 300)),
        ("fila, window 300", systems::fila(2, 300, MESSAGE, 300)),
        (
            "tokio-event-loop",
            systems::tokio_event_loop(2, MESSAGE, 300),
        ),
        ("rayon", systems::rayon(2, MESSAGE, 300)),
    ] {
        // Reaching here means each message was reported exactly once.
        let wrong: Vec<usize> = (0..300)
            .filter(|&i| times.checksums[i] != expected)
            .collect();
        assert!(
            wrong.is_empty(),
            "{system}: {} messages did not run every stage once, first {:?}",
            wrong.len(),
            wrong.first()
        );
    }
}

#[test]
fn burst_table_json_has_a_row_per_system_and_window() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burst-table"))
        .args([
            "--burst",
            "60",
            "--stages",
            "3,4,5,4,3",
            "--repeat",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let systems: Vec<&str> = rows.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert!(systems.contains(&"tokio-event-loop") && systems.contains(&"rayon"));
    assert!(
        systems.iter().filter(|s| **s == "fila").count() >= 3,
        "{systems:?}"
    );
    for r in &rows {
        for key in [
            "messages",
            "workers",
            "elapsed_s",
            "throughput_msgs_per_s",
            "latency_ms",
            "ideal",
            "efficiency",
            "latency_ratio",
        ] {
            assert!(r.get(key).is_some(), "row lacks {key}: {r}");
        }
        assert!(r.as_object().unwrap().contains_key("window"), "{r}");
        assert_eq!(r["messages"], 60);
        assert_eq!(r["window"].is_null(), r["system"] != "fila", "{r}");
    }
}

#[test]
fn scheduler_table_json_has_a_positive_rate_per_system_and_body() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler-table"))
        .args(["--tasks", "2000", "--rounds", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.as_object().unwrap().len(), 3, "{r}");
            let rate = r["tasks_per_s"].as_f64().unwrap();
            assert!(rate.is_finite() && rate > 0.0, "{r}");
            (
                r["system"].as_str().unwrap().to_owned(),
                r["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = ["fila", "rayon", "tokio"]
        .iter()
        .flat_map(|s| ["about-1us", "empty"].map(|b| (s.to_string(), b.to_string())))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}
