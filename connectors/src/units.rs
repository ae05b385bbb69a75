//! Durations and sizes as people write them on a command line: `500ms`,
//! `60s`, `5m`; `64MiB`, `512KiB`. Each type prints the way it parses, so a
//! flag's default can be written once, as a value, and shown in `--help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration above zero, in whole milliseconds: `500ms`, `60s`, `5m`, or
/// a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a duration like 500ms, 60s or 5m, got `{s}`");
        let t = s.trim();
        let (number, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1_000)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000)
        } else {
            (t, 1_000)
        };
        let n: u64 = number.trim().parse().map_err(|_| bad())?;
        let ms = n.checked_mul(scale_ms).ok_or_else(bad)?;
        if ms == 0 {
            return Err(format!("the duration must be above zero, got `{s}`"));
        }
        Ok(Span(Duration::from_millis(ms)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

/// Parses a duration as [`Span`] does.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<Span>().map(|span| span.0)
}

/// A size in bytes, above zero: a bare number of bytes, or with a binary
/// unit (`KiB`, `MiB`, `GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

impl FromStr for Bytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a size like 1048576, 512KiB, 64MiB or 1GiB, got `{s}`");
        let t = s.trim();
        let (number, scale) = UNITS
            .iter()
            .find_map(|&(unit, scale)| t.strip_suffix(unit).map(|n| (n, scale)))
            .unwrap_or((t, 1));
        let n: u64 = number.trim().parse().map_err(|_| bad())?;
        let bytes = n.checked_mul(scale).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(format!("the size must be above zero, got `{s}`"));
        }
        Ok(Bytes(bytes))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match UNITS
            .iter()
            .find(|&&(_, scale)| self.0 >= scale && self.0 % scale == 0)
        {
            Some(&(unit, scale)) => write!(f, "{}{unit}", self.0 / scale),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_ms_s_and_m_and_print_back() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        for bad in [
            "",
            "0",
            "0ms",
            "-1s",
            "1h",
            "1.5s",
            "s",
            "99999999999999999m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        for s in ["25ms", "1500ms", "5m", "90s"] {
            assert_eq!(s.parse::<Span>().unwrap().to_string(), s);
        }
        assert_eq!("60s".parse::<Span>().unwrap().to_string(), "1m");
    }

    #[test]
    fn sizes_parse_with_binary_units_and_print_back() {
        assert_eq!("64MiB".parse(), Ok(Bytes(64 << 20)));
        assert_eq!("512KiB".parse(), Ok(Bytes(512 << 10)));
        assert_eq!("1GiB".parse(), Ok(Bytes(1 << 30)));
        assert_eq!("1000".parse(), Ok(Bytes(1000)));
        for bad in [
            "",
            "0",
            "0MiB",
            "1MB",
            "-1",
            "1.5MiB",
            "MiB",
            "99999999999GiB",
        ] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?} parsed");
        }
        for s in ["64MiB", "1536KiB", "1000", "2GiB"] {
            assert_eq!(s.parse::<Bytes>().unwrap().to_string(), s);
        }
    }
}
