//! fila against a secured cluster, and compressed topics, with real
//! brokers: a broker with a SASL_SSL listener (PLAIN, SCRAM-SHA-256 and
//! SCRAM-SHA-512) and a mutual-TLS listener, started by `scripts/test` with
//! `scripts/kafka up --security sasl_ssl,ssl` and named by
//! FILA_TEST_BROKERS_SECURE; and the plaintext 4.x broker for the codecs,
//! written and read by Kafka's own Java console clients
//! (`scripts/kafka tools-classpath`). `#[ignore]`d in a plain `cargo test`.
//! Every wait is bounded.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fila_pipeline::reference::{message, FibRecord};
use serde_json::Value;
use support::*;

fn secure_port() -> String {
    let brokers = std::env::var("FILA_TEST_BROKERS_SECURE")
        .expect("FILA_TEST_BROKERS_SECURE names the secured broker (run scripts/test)");
    port_of(&brokers)
}

/// The client properties file of the secured broker for `mechanism`.
fn client_config(mechanism: &str) -> String {
    let port = secure_port();
    scripts_kafka(&["client-config", "--port", &port, "--mechanism", mechanism])
        .trim()
        .to_owned()
}

/// The bootstrap address a properties file names.
fn bootstrap_of(config: &str) -> String {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("bootstrap.servers="))
        .expect("bootstrap.servers in the client properties")
        .to_owned()
}

/// `fila load` of `n` light records through a running `fila run`, both
/// with `config`; the load's JSON report.
fn load(config: &str, input: &str, output: &str, n: u64) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["load", "--kafka-config", config])
        .args(["--input-topic", input, "--output-topic", output])
        .args(["--burst", &n.to_string(), "--stages", "1,1,1,1,1"])
        .args(["--timeout-s", "60", "--report", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// 1,000 records through `fila run` and `fila load` over `mechanism`:
/// nothing lost, nothing twice; and with every debug log on, the password
/// shows in no output and not on the metrics page.
fn thousand_over(mechanism: &str) {
    let config = client_config(mechanism);
    let secret = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("sasl.password=").map(str::to_owned));
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    let mut fila = Fila::start(
        &bootstrap_of(&config),
        &[
            "--kafka-config",
            &config,
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = fila.metrics_addr();
    fila.wait_assigned();
    let report = load(&config, &input, &output, 1000);
    assert_eq!(
        (
            report["messages"].as_u64(),
            report["lost"].as_u64(),
            report["duplicates"].as_u64()
        ),
        (Some(1000), Some(0), Some(0)),
        "{mechanism}: {report}"
    );
    let page = scrape(&addr);
    let (run, stderr) = fila.stop_with_stderr();
    assert_eq!(run["messages"], 1000);
    if let Some(secret) = secret {
        for (what, text) in [
            ("stderr", stderr),
            ("the report", run.to_string()),
            ("metrics", page),
        ] {
            assert!(!text.contains(&secret), "the password shows in {what}");
        }
    }
}

#[test]
#[ignore = "needs the secured Kafka broker: run scripts/test"]
fn sasl_ssl_with_scram_sha_512_loses_nothing() {
    thousand_over("scram-sha-512");
}

#[test]
#[ignore = "needs the secured Kafka broker: run scripts/test"]
fn sasl_ssl_with_plain_loses_nothing() {
    thousand_over("plain");
}

#[test]
#[ignore = "needs the secured Kafka broker: run scripts/test"]
fn mutual_tls_loses_nothing() {
    thousand_over("mtls");
}

/// A wrong password: exit 1 well within the retry timeout, an error that
/// names authentication, and the password in no output, even with every
/// debug log of fila and of librdkafka's security code on.
#[test]
#[ignore = "needs the secured Kafka broker: run scripts/test"]
fn a_wrong_password_exits_1_naming_authentication_and_never_shows() {
    let good = client_config("scram-sha-512");
    let wrong = format!("not-the-password-{}", unique("pw"));
    let text = std::fs::read_to_string(&good).unwrap();
    let bad: String = text
        .lines()
        .map(|l| match l.strip_prefix("sasl.password=") {
            Some(_) => format!("sasl.password={wrong}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let bad_config = std::env::temp_dir().join(format!("{}.properties", unique("bad")));
    std::fs::write(&bad_config, bad).unwrap();
    let retry_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--source", "kafka", "--kafka-config"])
        .arg(&bad_config)
        .args([
            "--input-topic",
            &unique("in"),
            "--output-topic",
            &unique("out"),
        ])
        .args([
            "--kafka-retry-timeout",
            "30s",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("FILA_LOG", "debug")
        .env("FILA_RDKAFKA_DEBUG", "security,broker,conf")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_output_within(child, retry_timeout + Duration::from_secs(30));
    let took = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < retry_timeout, "exited after {took:?}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains(&wrong), "the password shows in {what}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_fila"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(&wrong));
    eprintln!("a wrong password: exit 1 after {took:?}");
    std::fs::remove_file(bad_config).ok();
}

fn wait_with_output_within(
    mut child: std::process::Child,
    limit: Duration,
) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            panic!("fila did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The class path of Kafka's Java console clients (fetched once).
fn java_tools() -> String {
    scripts_kafka(&["tools-classpath", "--version", "4.1.1"])
        .trim()
        .to_owned()
}

/// The class path of the broker, whose log dump tool reads a topic's data
/// files.
fn java_broker() -> String {
    scripts_kafka(&["broker-classpath", "--version", "4.1.1"])
        .trim()
        .to_owned()
}

/// Writes `values` to `topic` with Kafka's Java console producer,
/// compressed with `codec`.
fn java_produce(brokers: &str, topic: &str, codec: &str, values: &[Vec<u8>]) {
    let mut child = Command::new("java")
        .args([
            "-cp",
            &java_tools(),
            "org.apache.kafka.tools.ConsoleProducer",
        ])
        .args(["--bootstrap-server", brokers, "--topic", topic])
        .args(["--compression-codec", codec])
        .args(["--producer-property", "linger.ms=50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for v in values {
            stdin.write_all(v).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = wait_with_output_within(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{codec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `n` values of `topic` with Kafka's Java console consumer.
fn java_consume(brokers: &str, topic: &str, n: usize) -> Vec<String> {
    let child = Command::new("java")
        .args([
            "-cp",
            &java_tools(),
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        ])
        .args(["--bootstrap-server", brokers, "--topic", topic])
        .args(["--from-beginning", "--max-messages", &n.to_string()])
        .args(["--timeout-ms", "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java runs");
    let out = wait_with_output_within(child, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "the console consumer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The codecs of every batch in `topic`'s log on the broker at `port`,
/// as Kafka's log dump tool reads them from the broker's data.
fn codecs_on_disk(port: &str, topic: &str) -> Vec<String> {
    let state = std::env::var("FILA_KAFKA_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("fila-kafka"));
    let data = state.join(port).join("data");
    let mut codecs = Vec::new();
    for dir in std::fs::read_dir(&data).unwrap().flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{topic}-")) {
            continue;
        }
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "log") {
                let out = Command::new("java")
                    .args(["-cp", &java_broker(), "kafka.tools.DumpLogSegments"])
                    .arg("--files")
                    .arg(file.path())
                    .output()
                    .unwrap();
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(at) = line.find("compresscodec: ") {
                        let codec = line[at + 15..].split_whitespace().next().unwrap_or("");
                        codecs.push(codec.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    codecs
}

/// A topic written by another client with each of the four codecs is read
/// by fila, and fila's output with `compression.type=zstd` is written
/// zstd-compressed and read back by another client.
#[test]
#[ignore = "needs Kafka brokers: run scripts/test"]
fn every_codec_is_read_and_zstd_output_is_read_by_another_client() {
    const PER_CODEC: u64 = 25;
    let brokers = brokers_4x();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let mut id = 0;
    for codec in codecs {
        let values: Vec<Vec<u8>> = (0..PER_CODEC)
            .map(|_| {
                id += 1;
                message(id, [1, 2, 3, 4, 5], 0)
            })
            .collect();
        java_produce(&brokers, &input, codec, &values);
    }
    let n = id as usize;
    let fila = Fila::start(
        &brokers,
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group",
            &group,
            "--kafka-property",
            "compression.type=zstd",
        ],
    );
    let lines = java_consume(&brokers, &output, n);
    let report = fila.stop();
    assert_eq!(report["messages"], n as u64);
    let mut ids: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<FibRecord>(l)
                .expect("an output record")
                .id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=n as u64).collect::<Vec<_>>());
    let written = codecs_on_disk(&port_of(&brokers), &output);
    assert!(!written.is_empty(), "no batches of {output} found on disk");
    assert!(
        written.iter().all(|c| c == "zstd"),
        "fila wrote batches compressed with {written:?}"
    );
    let read = codecs_on_disk(&port_of(&brokers), &input);
    for codec in codecs {
        assert!(
            read.iter().any(|c| c == codec),
            "no {codec} batch in the input: {read:?}"
        );
    }
}
