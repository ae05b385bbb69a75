//! Client properties: what a user tells librdkafka, in the Java clients'
//! `key=value` properties format, and which cluster they are for.
//!
//! Users of Kafka's own tools have a client properties file for their
//! cluster (`--command-config`, `kcat -F`). fila takes the same file
//! (`--kafka-config`) and single properties (`--kafka-property`), and hands
//! them to every client it makes: the consumer, the producer, the admin
//! client and the load client's reader and writer. Three kinds of keys:
//!
//! - **fila's own** ([`OWNED`]): fila sets them for its guarantees (manual
//!   commits after acknowledgement, `acks=all`, idempotence) or from a flag
//!   of its own (`--group`, `--offset-reset`); setting one is an error that
//!   names the flag.
//! - **fila's defaults**: tuning fila sets unless the user does (fetch and
//!   batch sizes, `linger.ms`, `client.id`); the user's value wins.
//! - **the rest**: passed through as they are (`security.protocol`,
//!   `sasl.*`, `ssl.*`, `compression.type`, ...). librdkafka names any key
//!   it does not know.
//!
//! Secrets (passwords, keys) never appear in a log line, an error or a
//! `Debug` print: see [`ClientProperties::is_secret`].

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use crate::ConnectorError;

/// Keys fila sets itself, and what the user sets instead.
pub const OWNED: &[(&str, &str)] = &[
    ("group.id", "--group"),
    (
        "enable.auto.commit",
        "nothing: fila commits after acknowledgement",
    ),
    (
        "enable.auto.offset.store",
        "nothing: fila commits after acknowledgement",
    ),
    ("auto.offset.reset", "--offset-reset"),
    ("group.protocol", "--group-protocol"),
    ("acks", "nothing: fila writes with acks=all"),
    (
        "enable.idempotence",
        "nothing: fila's producers are idempotent",
    ),
    (
        "transactional.id",
        "nothing: fila sets it under --exactly-once",
    ),
    ("message.timeout.ms", "--kafka-retry-timeout"),
    ("enable.partition.eof", "nothing"),
    ("statistics.interval.ms", "nothing"),
];

/// A Kafka cluster as fila's clients reach it: its bootstrap brokers and
/// the client properties for it.
#[derive(Clone, Default)]
pub struct Cluster {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub properties: ClientProperties,
}

impl Cluster {
    pub fn new(brokers: impl Into<String>, properties: ClientProperties) -> Cluster {
        Cluster {
            brokers: brokers.into(),
            properties,
        }
    }

    /// The security protocol, lowercased: `plaintext` unless the
    /// properties say otherwise.
    pub fn security_protocol(&self) -> String {
        self.properties
            .get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase()
    }

    /// Whether the clients talk to the brokers in plain TCP, with no TLS
    /// and no SASL: then fila can ask a broker what it speaks directly.
    pub fn is_plaintext(&self) -> bool {
        self.security_protocol() == "plaintext"
    }
}

impl From<&str> for Cluster {
    fn from(brokers: &str) -> Cluster {
        Cluster::new(brokers, ClientProperties::default())
    }
}

impl From<&String> for Cluster {
    fn from(brokers: &String) -> Cluster {
        Cluster::from(brokers.as_str())
    }
}

impl From<&Cluster> for Cluster {
    fn from(cluster: &Cluster) -> Cluster {
        cluster.clone()
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties)
            .finish()
    }
}

/// Client properties in the order they were given; a key given again
/// replaces its earlier value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties {
    entries: Vec<(String, String)>,
}

impl ClientProperties {
    /// Sets `key` to `value`, replacing an earlier value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `key`, returning its value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Reads a properties file.
    pub fn from_file(path: &Path) -> Result<ClientProperties, ConnectorError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConnectorError::Config {
            message: format!("reading {}: {e}", path.display()),
        })?;
        ClientProperties::parse(&text).map_err(|message| ConnectorError::Config {
            message: format!("{}: {message}", path.display()),
        })
    }

    /// Parses the Java properties format: `key=value`, `key: value` or
    /// `key value` per line; `#` and `!` start a comment line; a line
    /// ending in a backslash goes on on the next; `\t`, `\n`, `\r`, `\f`,
    /// `\uXXXX` and a backslash before any other character are escapes.
    pub fn parse(text: &str) -> Result<ClientProperties, String> {
        let mut properties = ClientProperties::default();
        let mut lines = text.lines().enumerate();
        while let Some((number, line)) = lines.next() {
            let mut logical = line.trim_start().to_owned();
            if logical.is_empty() || logical.starts_with('#') || logical.starts_with('!') {
                continue;
            }
            // A line continues while it ends in an odd number of
            // backslashes.
            while ends_in_escape(&logical) {
                logical.pop();
                match lines.next() {
                    Some((_, next)) => logical.push_str(next.trim_start()),
                    None => break,
                }
            }
            let (key, value) = split_pair(&logical);
            let key = unescape(key).map_err(|e| format!("line {}: {e}", number + 1))?;
            let value = unescape(value).map_err(|e| format!("line {}: {e}", number + 1))?;
            if key.is_empty() {
                return Err(format!("line {}: a value with no key", number + 1));
            }
            properties.set(key, value);
        }
        Ok(properties)
    }

    /// Parses one `KEY=VALUE`, as `--kafka-property` takes it.
    pub fn parse_pair(pair: &str) -> Result<(String, String), String> {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.to_owned()))
            }
            _ => Err("expected KEY=VALUE".to_owned()),
        }
    }

    /// Whether `key` holds a secret: its value is never shown.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        key.contains("password")
            || key.contains("secret")
            || key.ends_with(".key.pem")
            || key == "sasl.jaas.config"
            || key == "ssl.key.location"
            || key == "ssl_key"
            || key.ends_with("token")
    }

    /// Replaces every secret value of these properties that appears in
    /// `text` with `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in self.secret_values() {
            out = out.replace(value, "[redacted]");
        }
        out
    }

    fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(key, value)| Self::is_secret(key) && value.len() >= 3)
            .map(|(_, value)| value.as_str())
    }

    /// Remembers this process's secrets, so that [`redact`] scrubs them
    /// from every log line and error that the clients make.
    pub(crate) fn remember_secrets(&self) {
        let mut known = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
        for value in self.secret_values() {
            if !known.iter().any(|k| k == value) {
                known.push(value.to_owned());
            }
        }
    }

    /// Refuses the keys fila sets itself, naming the flag to use instead.
    pub fn check_owned(&self) -> Result<(), String> {
        for (key, _) in &self.entries {
            if let Some((_, instead)) = OWNED.iter().find(|(owned, _)| owned == key) {
                return Err(format!(
                    "the client property {key} is fila's to set; use {instead}"
                ));
            }
        }
        Ok(())
    }

    /// The properties as librdkafka takes them: the Java clients' JAAS
    /// line for PLAIN and SCRAM becomes `sasl.username` and
    /// `sasl.password`; Java-only keys that have a librdkafka counterpart
    /// are refused with its name.
    pub fn for_librdkafka(&self) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in &self.entries {
            match key.as_str() {
                "sasl.jaas.config" => {
                    let (username, password) = jaas_credentials(value)?;
                    out.push(("sasl.username".into(), username));
                    out.push(("sasl.password".into(), password));
                }
                "ssl.truststore.location" | "ssl.truststore.password" | "ssl.truststore.type" => {
                    return Err(format!(
                        "{key} is a Java client property (a JKS or PKCS12 trust store); \
                         give the CA certificates in PEM with ssl.ca.location"
                    ))
                }
                "ssl.keystore.type" if !value.eq_ignore_ascii_case("PKCS12") => {
                    return Err(format!(
                        "ssl.keystore.type {value}: librdkafka reads PKCS12 key stores \
                         (ssl.keystore.location), or PEM with ssl.certificate.location \
                         and ssl.key.location"
                    ))
                }
                "ssl.keystore.type" => {}
                _ => out.push((key.clone(), value.clone())),
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.entries {
            if Self::is_secret(key) {
                map.entry(key, &"[redacted]");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

/// Every secret value a client of this process was given.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `text` with every secret this process's clients were given replaced by
/// `[redacted]`: librdkafka quotes values in its messages, and fila's logs
/// and errors must show no secret.
pub fn redact(text: &str) -> String {
    let known = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_owned();
    for value in known.iter() {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), "[redacted]");
        }
    }
    out
}

fn ends_in_escape(line: &str) -> bool {
    line.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line at the first unescaped `=`, `:` or whitespace,
/// dropping the whitespace around the separator.
fn split_pair(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' => return (line[..i].trim_end(), line[i + 1..].trim_start()),
            b' ' | b'\t' => {
                let rest = line[i..].trim_start();
                let rest = rest
                    .strip_prefix('=')
                    .or_else(|| rest.strip_prefix(':'))
                    .unwrap_or(rest);
                return (&line[..i], rest.trim_start());
            }
            _ => i += 1,
        }
    }
    (line, "")
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| "a \\u escape needs four hex digits".to_owned())?;
                out.push(code);
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// The user name and password of a PLAIN or SCRAM JAAS line:
/// `org.apache.kafka...LoginModule required username="u" password="p";`.
fn jaas_credentials(jaas: &str) -> Result<(String, String), String> {
    let field = |name: &str| -> Option<String> {
        let at = jaas.find(&format!("{name}="))? + name.len() + 1;
        let rest = &jaas[at..];
        let quoted = rest.strip_prefix('"')?;
        let end = quoted.find('"')?;
        Some(quoted[..end].to_owned())
    };
    let module_ok = jaas.contains("PlainLoginModule") || jaas.contains("ScramLoginModule");
    match (module_ok, field("username"), field("password")) {
        (true, Some(username), Some(password)) => Ok((username, password)),
        _ => Err(
            "sasl.jaas.config: fila reads the PlainLoginModule and ScramLoginModule lines \
             (username=\"...\" password=\"...\"); for other mechanisms set librdkafka's \
             sasl.* properties"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_java_properties_format_parses() {
        let text = "# a comment\n! another\n\nbootstrap.servers=b1:9092,b2:9092\n\
                    security.protocol : SASL_SSL\nsasl.mechanism SCRAM-SHA-512\n\
                    long.value=one\\\n    two\nescaped\\=key=a\\tb\nempty=\n";
        let p = ClientProperties::parse(text).unwrap();
        assert_eq!(p.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(p.get("long.value"), Some("onetwo"));
        assert_eq!(p.get("escaped=key"), Some("a\tb"));
        assert_eq!(p.get("empty"), Some(""));
        assert!(ClientProperties::parse("=novalue").is_err());
    }

    #[test]
    fn a_key_given_again_replaces_the_first() {
        let mut p = ClientProperties::parse("a=1\nb=2\na=3\n").unwrap();
        p.set("b", "4");
        assert_eq!(p.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "4")]);
    }

    #[test]
    fn secrets_never_print() {
        let mut p = ClientProperties::default();
        p.set("sasl.username", "alice");
        p.set("sasl.password", "hunter2-secret");
        p.set("ssl.key.password", "k3y-pass");
        let shown = format!("{p:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2-secret") && !shown.contains("k3y-pass"),
            "{shown}"
        );
        let message = p.redact("auth failed for alice with hunter2-secret");
        assert_eq!(message, "auth failed for alice with [redacted]");
    }

    #[test]
    fn fila_owned_keys_are_refused_with_the_flag_to_use() {
        let p = ClientProperties::parse("group.id=x\n").unwrap();
        assert!(p.check_owned().unwrap_err().contains("--group"));
        let p = ClientProperties::parse("compression.type=zstd\n").unwrap();
        assert!(p.check_owned().is_ok());
    }

    #[test]
    fn a_jaas_line_becomes_username_and_password() {
        let p = ClientProperties::parse(
            "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
             username=\"KEY\" password=\"SECRET\";\n",
        )
        .unwrap();
        let out = p.for_librdkafka().unwrap();
        assert_eq!(
            out,
            [
                ("sasl.username".to_owned(), "KEY".to_owned()),
                ("sasl.password".to_owned(), "SECRET".to_owned())
            ]
        );
        let bad = ClientProperties::parse("ssl.truststore.location=/x.jks\n").unwrap();
        assert!(bad
            .for_librdkafka()
            .unwrap_err()
            .contains("ssl.ca.location"));
    }
}
