//! The report printed by `fila run` and `fila load`; its fields are
//! defined in docs/design/measurement.md.
//! The JSON form is exactly these structs, serialized.

use std::fmt::Write as _;
use std::time::Duration;

use fila_runtime::ideal::{Ideal, NOISY_SPREAD};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub messages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    pub elapsed_s: f64,
    pub throughput_msgs_per_s: f64,
    pub latency_ms: LatencyMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ideal: Option<IdealReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<f64>,
    /// `fila load` only: ids that never came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// `fila load` only: extra copies of ids that came back more than once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
}

/// An empty histogram of latencies in microseconds: 1 µs to 1 hour at 3
/// significant figures. Longer latencies saturate at the top.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyMs {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs {
                mean: 0.0,
                p50: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1e3;
        LatencyMs {
            mean: h.mean() / 1e3,
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IdealReport {
    pub work_per_message_ms: f64,
    pub throughput_msgs_per_s: f64,
    pub mean_latency_ms: f64,
    pub calibration_spread: f64,
}

impl Report {
    /// A report of `messages` handled over `elapsed`. With an ideal, it
    /// also carries efficiency and latency ratio against it.
    pub fn new(
        messages: u64,
        elapsed: Duration,
        latency_ms: LatencyMs,
        ideal: Option<&Ideal>,
    ) -> Report {
        let elapsed_s = elapsed.as_secs_f64();
        let throughput = if elapsed_s > 0.0 {
            messages as f64 / elapsed_s
        } else {
            0.0
        };
        let ideal = ideal.map(|i| IdealReport {
            work_per_message_ms: i.work_per_message.as_secs_f64() * 1e3,
            throughput_msgs_per_s: i.throughput(),
            mean_latency_ms: i.mean_latency(messages as usize).as_secs_f64() * 1e3,
            calibration_spread: i.spread,
        });
        Report {
            messages,
            workers: None,
            window: None,
            elapsed_s,
            throughput_msgs_per_s: throughput,
            latency_ms,
            efficiency: ideal.map(|i| throughput / i.throughput_msgs_per_s),
            latency_ratio: ideal.map(|i| latency_ms.mean / i.mean_latency_ms),
            ideal,
            lost: None,
            duplicates: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |text: String| {
            let _ = writeln!(s, "{text}");
        };
        let mut setup = format!("{} messages", self.messages);
        if let Some(w) = self.workers {
            setup += &format!(", {w} workers");
        }
        if let Some(w) = self.window {
            setup += &format!(", window {w}");
        }
        line(setup);
        line(format!("elapsed        {:>10.3} s", self.elapsed_s));
        let l = &self.latency_ms;
        match &self.ideal {
            Some(i) => {
                line(format!(
                    "throughput     {:>10.1} msg/s   ideal {:>10.1}   efficiency    {:.3}",
                    self.throughput_msgs_per_s,
                    i.throughput_msgs_per_s,
                    self.efficiency.unwrap_or(0.0)
                ));
                line(format!(
                    "mean latency   {:>10.1} ms      ideal {:>10.1}   latency ratio {:.3}",
                    l.mean,
                    i.mean_latency_ms,
                    self.latency_ratio.unwrap_or(0.0)
                ));
            }
            None => {
                line(format!(
                    "throughput     {:>10.1} msg/s",
                    self.throughput_msgs_per_s
                ));
                line(format!("mean latency   {:>10.1} ms", l.mean));
            }
        }
        line(format!(
            "latency        p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            l.p50, l.p99, l.max
        ));
        if let Some(i) = &self.ideal {
            let noisy = if i.calibration_spread > NOISY_SPREAD {
                format!("  (above {:.0}%: a noisy run)", NOISY_SPREAD * 100.0)
            } else {
                String::new()
            };
            line(format!(
                "work/message   {:>10.3} ms      calibrated before and after, spread {:.1}%{noisy}",
                i.work_per_message_ms,
                i.calibration_spread * 100.0
            ));
        }
        if let (Some(lost), Some(dup)) = (self.lost, self.duplicates) {
            line(format!("lost {lost}, duplicates {dup}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_fields_follow_from_the_calibration() {
        let ideal = Ideal {
            workers: 2,
            work_per_message: Duration::from_millis(2),
            spread: 0.01,
        };
        let lat = LatencyMs {
            mean: 1100.0,
            p50: 1000.0,
            p99: 2000.0,
            max: 2100.0,
        };
        let r = Report::new(1000, Duration::from_secs(1), lat, Some(&ideal));
        assert_eq!(r.throughput_msgs_per_s, 1000.0);
        let i = r.ideal.unwrap();
        assert!((i.throughput_msgs_per_s - 1000.0).abs() < 1e-9);
        assert!((r.efficiency.unwrap() - 1.0).abs() < 1e-9);
        // 1000 messages on 2 workers at 2 ms: mean of (i/2 + 1) * 2 ms.
        assert!((i.mean_latency_ms - 501.0).abs() < 1e-6, "{i:?}");
        assert!((r.latency_ratio.unwrap() - 1100.0 / 501.0).abs() < 1e-9);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(
            json.get("lost").is_none(),
            "run reports carry no load fields"
        );
    }
}
