//! The audit log: one JSON line per MCP request through the connector endpoint.
//!
//! Who (org, key id), where (tunnel, channel), what (JSON-RPC method, the tool
//! name of `tools/call`), how it ended (status, error code), latency and sizes.
//! Never bodies, header values or secrets.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use miniserde::{json, Serialize};

use super::timestamp::rfc3339;

/// Names from clients are capped so a hostile method name cannot bloat the log.
const MAX_NAME: usize = 256;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditRecord {
    pub org: String,
    pub tunnel: String,
    pub channel: String,
    pub key_id: String,
    pub request_id: Option<String>,
    /// `POST` or `DELETE`.
    pub http_method: String,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub status: u16,
    pub code: Option<String>,
    pub latency: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    org: &'a str,
    tunnel: &'a str,
    channel: &'a str,
    key_id: &'a str,
    request_id: Option<&'a str>,
    http_method: &'a str,
    method: Option<String>,
    tool: Option<String>,
    status: u16,
    code: Option<&'a str>,
    latency_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
}

fn cap(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.chars().take(MAX_NAME).collect())
}

/// One line (with its newline) for `rec` at `time`.
pub fn encode(rec: &AuditRecord, time: SystemTime) -> String {
    let line = Line {
        time: rfc3339(time),
        org: &rec.org,
        tunnel: &rec.tunnel,
        channel: &rec.channel,
        key_id: &rec.key_id,
        request_id: rec.request_id.as_deref(),
        http_method: &rec.http_method,
        method: cap(&rec.method),
        tool: cap(&rec.tool),
        status: rec.status,
        code: rec.code.as_deref(),
        latency_ms: u64::try_from(rec.latency.as_millis()).unwrap_or(u64::MAX),
        bytes_in: rec.bytes_in,
        bytes_out: rec.bytes_out,
    };
    let mut s = json::to_string(&line);
    s.push('\n');
    s
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Where audit lines go; a disabled log drops them.
pub struct AuditLog {
    file: Option<RefCell<File>>,
    path: Option<std::path::PathBuf>,
    failing: Cell<bool>,
}

impl AuditLog {
    pub fn disabled() -> AuditLog {
        AuditLog {
            file: None,
            path: None,
            failing: Cell::new(false),
        }
    }

    /// Appends to `path` (created 0600).
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        Ok(AuditLog {
            file: Some(RefCell::new(open_append(path)?)),
            path: Some(path.to_path_buf()),
            failing: Cell::new(false),
        })
    }

    /// After log rotation (SIGHUP): continue in a fresh file at the same path.
    /// On failure the old file is kept.
    pub fn reopen(&self) {
        let (Some(file), Some(path)) = (&self.file, &self.path) else {
            return;
        };
        match open_append(path) {
            Ok(f) => *file.borrow_mut() = f,
            Err(e) => log::error!("cannot reopen the audit log {}: {e}", path.display()),
        }
    }

    pub fn record(&self, rec: &AuditRecord) {
        let Some(file) = &self.file else { return };
        let line = encode(rec, SystemTime::now());
        // One write_all of one line on an O_APPEND file: lines never interleave.
        let r = file.borrow_mut().write_all(line.as_bytes());
        match r {
            Ok(()) => {
                if self.failing.replace(false) {
                    log::warn!("audit log writable again");
                }
            }
            Err(e) => {
                // Say it once per failure streak, not once per request.
                if !self.failing.replace(true) {
                    log::error!("cannot write the audit log: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn line_has_the_fields_and_nothing_else() {
        let rec = AuditRecord {
            org: "org_a".into(),
            tunnel: "tunnel_x".into(),
            channel: "main".into(),
            key_id: "key_1".into(),
            request_id: Some("req_1".into()),
            http_method: "POST".into(),
            method: Some("tools/call".into()),
            tool: Some("say \"hi\"\n".into()),
            status: 200,
            code: None,
            latency: Duration::from_millis(1500),
            bytes_in: 10,
            bytes_out: 20,
        };
        let line = encode(&rec, UNIX_EPOCH);
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "escaped, one line");
        let v: miniserde::json::Value = json::from_str(line.trim_end()).unwrap();
        let miniserde::json::Value::Object(o) = v else {
            panic!()
        };
        let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bytes_in",
                "bytes_out",
                "channel",
                "code",
                "http_method",
                "key_id",
                "latency_ms",
                "method",
                "org",
                "request_id",
                "status",
                "time",
                "tool",
                "tunnel"
            ]
        );
        assert!(line.contains("\"latency_ms\":1500"));
        assert!(line.contains("\"time\":\"1970-01-01T00:00:00.000Z\""));
    }

    #[test]
    fn long_names_are_capped() {
        let rec = AuditRecord {
            method: Some("m".repeat(10_000)),
            ..AuditRecord::default()
        };
        assert!(encode(&rec, UNIX_EPOCH).len() < 1000);
    }

    #[test]
    fn appends_lines_to_the_file() {
        let p = std::env::temp_dir().join(format!(
            "mcp-tunnel-audit-{}-{}",
            std::process::id(),
            crate::relay::keys::random_hex("", 8).unwrap()
        ));
        let log = AuditLog::open(&p).unwrap();
        log.record(&AuditRecord::default());
        log.record(&AuditRecord::default());
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        // Rotation: the old file moves away, reopen starts a new one.
        let rotated = p.with_extension("1");
        std::fs::rename(&p, &rotated).unwrap();
        log.reopen();
        log.record(&AuditRecord::default());
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            2
        );
        std::fs::remove_file(&p).unwrap();
        std::fs::remove_file(&rotated).unwrap();
    }
}
