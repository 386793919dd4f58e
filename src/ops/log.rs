//! Process logging: text lines or JSON lines, one event per line, on stderr or
//! appended to a file that SIGHUP reopens (for logrotate). JSON lines written
//! while a worker handles a command carry its `request_id`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::LevelFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// `trace`, `debug`, `info`, `warn` (or `warning`), `error`, `off`; case-insensitive.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(LevelFilter::Trace),
        "debug" => Some(LevelFilter::Debug),
        "info" => Some(LevelFilter::Info),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "error" => Some(LevelFilter::Error),
        "off" => Some(LevelFilter::Off),
        _ => None,
    }
}

/// Dependencies that log request details at debug level; capped so that even a
/// `debug` run shows our own events without theirs.
const NOISY: &[&str] = &["ureq", "ureq_proto", "rustls", "async_io", "polling"];

/// Installs the global logger on stderr. A second call (tests) is harmless and ignored.
pub fn init(level: LevelFilter, format: LogFormat) {
    install(level, format, None);
}

/// Installs the global logger appending to `path` (created with mode 0640 if
/// missing). Fails only when the file cannot be opened; [`reopen`] later opens
/// the same path again.
pub fn init_file(level: LevelFilter, format: LogFormat, path: &Path) -> io::Result<()> {
    let file = Arc::new(LogFile {
        path: path.to_path_buf(),
        file: Mutex::new(open_append(path)?),
    });
    let _ = LOG_FILE.set(file.clone());
    install(level, format, Some(file));
    Ok(())
}

/// The log file of this process, for [`reopen`].
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// After logrotate renamed the file: open the path again and write there. On
/// failure the old file stays in use (nothing is lost) and the error is returned.
/// `Ok(false)`: logs go to stderr, nothing to reopen.
pub fn reopen() -> io::Result<bool> {
    let Some(lf) = LOG_FILE.get() else {
        return Ok(false);
    };
    let fresh = open_append(&lf.path)?;
    *lf.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    Ok(true)
}

/// The `Write` end env_logger gets: each record is one `write_all` under the lock.
struct FileWriter(Arc<LogFile>);

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.0.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static REQUEST_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// While alive, JSON log lines from this thread carry `request_id`.
pub struct RequestScope(());

impl RequestScope {
    pub fn enter(request_id: &str) -> RequestScope {
        REQUEST_ID.with(|r| *r.borrow_mut() = Some(request_id.to_string()));
        RequestScope(())
    }
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        REQUEST_ID.with(|r| *r.borrow_mut() = None);
    }
}

fn install(level: LevelFilter, format: LogFormat, file: Option<Arc<LogFile>>) {
    let mut builder = env_logger::Builder::new();
    if let Some(f) = file {
        builder.target(env_logger::Target::Pipe(Box::new(FileWriter(f))));
    }
    builder.filter_level(level);
    for module in NOISY {
        builder.filter_module(module, level.min(LevelFilter::Info));
    }
    builder.format(move |buf, record| {
        let mut line = String::with_capacity(128);
        REQUEST_ID.with(|id| {
            format_record(
                &mut line,
                format,
                SystemTime::now(),
                record.level(),
                record.target(),
                id.borrow().as_deref(),
                record.args(),
            )
        });
        buf.write_all(line.as_bytes())
    });
    let _ = builder.try_init();
}

/// Renders one event as exactly one line (ending in `\n`): embedded newlines
/// are escaped so a hostile value cannot forge extra log lines.
pub fn format_record(
    out: &mut String,
    format: LogFormat,
    now: SystemTime,
    level: log::Level,
    target: &str,
    request_id: Option<&str>,
    args: &std::fmt::Arguments<'_>,
) {
    let mut msg = String::new();
    let _ = msg.write_fmt(*args);
    match format {
        LogFormat::Text => {
            write_timestamp(out, now);
            let _ = write!(out, " {:<5} {target}: ", level);
            for c in msg.chars() {
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() && c != '\t' => {
                        let _ = write!(out, "\\u{{{:x}}}", c as u32);
                    }
                    c => out.push(c),
                }
            }
        }
        LogFormat::Json => {
            out.push_str("{\"ts\":\"");
            write_timestamp(out, now);
            out.push_str("\",\"level\":\"");
            out.push_str(&level.as_str().to_ascii_lowercase());
            out.push_str("\",\"target\":");
            json_string(out, target);
            if let Some(id) = request_id {
                out.push_str(",\"request_id\":");
                json_string(out, id);
            }
            out.push_str(",\"msg\":");
            json_string(out, &msg);
            out.push('}');
        }
    }
    out.push('\n');
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-27T11:40:00.123Z`.
pub fn write_timestamp(out: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    );
}

// Howard Hinnant's days → civil date algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render(format: LogFormat, msg: &str) -> String {
        render_with(format, None, msg)
    }

    fn render_with(format: LogFormat, request_id: Option<&str>, msg: &str) -> String {
        let mut out = String::new();
        let t = UNIX_EPOCH + Duration::from_millis(1_795_779_600_123);
        format_record(
            &mut out,
            format,
            t,
            log::Level::Warn,
            "mcp_tunnel::x",
            request_id,
            &format_args!("{msg}"),
        );
        out
    }

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let mut s = String::new();
        write_timestamp(&mut s, UNIX_EPOCH + Duration::from_millis(951_782_400_000));
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        s.clear();
        write_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn text_is_one_line() {
        let line = render(LogFormat::Text, "a\nfake line\r\u{1b}[31m");
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert!(line.contains("WARN  mcp_tunnel::x: a\\nfake line\\r\\u{1b}[31m"));
    }

    #[test]
    fn json_is_one_escaped_object() {
        let line = render(LogFormat::Json, "say \"hi\"\n\\ \u{1}");
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.starts_with("{\"ts\":\""));
        assert!(line.contains("\"level\":\"warn\""));
        assert!(line.contains("\"target\":\"mcp_tunnel::x\""));
        assert!(line.contains("\"msg\":\"say \\\"hi\\\"\\n\\\\ \\u0001\"}"));
    }

    #[test]
    fn json_carries_the_request_id_escaped() {
        let line = render_with(LogFormat::Json, Some("req\"1\n"), "hi");
        assert!(
            line.contains(
                "\"target\":\"mcp_tunnel::x\",\"request_id\":\"req\\\"1\\n\",\"msg\":\"hi\"}"
            ),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn request_scope_is_per_thread_and_ends_on_drop() {
        let get = || REQUEST_ID.with(|r| r.borrow().clone());
        {
            let _s = RequestScope::enter("req_1");
            assert_eq!(get().as_deref(), Some("req_1"));
            let other = std::thread::spawn(move || REQUEST_ID.with(|r| r.borrow().clone()));
            assert_eq!(other.join().unwrap(), None);
        }
        assert_eq!(get(), None);
    }

    #[test]
    fn parses_levels_and_formats() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("loud"), None);
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("xml"), None);
    }
}
