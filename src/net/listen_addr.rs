//! Where a small HTTP listener binds: `host:port` (an IP address) or
//! `unix:/path` for a unix socket (scraped through a file, no port open).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use async_io::Async;

/// `sun_path` holds 108 bytes on Linux, including the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// `127.0.0.1:8080`, `[::1]:8080` or `unix:/run/mcp-tunnel/health.sock`.
    pub fn parse(s: &str) -> Result<ListenAddr, &'static str> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path");
            }
            if path.len() > MAX_UNIX_PATH {
                return Err("the unix socket path is longer than 107 bytes");
            }
            if path.contains('\0') {
                return Err("the unix socket path contains a NUL byte");
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| "expected host:port (an IP address), unix:/path or off")
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(Async<std::net::TcpListener>),
    Unix(Async<std::os::unix::net::UnixListener>),
}

impl Listener {
    /// The bound address as an operator would write it (the real port when 0 was asked for).
    pub fn local(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .get_ref()
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string()),
            Listener::Unix(l) => l
                .get_ref()
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".to_string()),
        }
    }
}

/// Removes the socket file on drop (the next start would find it stale otherwise).
pub struct SocketFile(PathBuf);

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `addr`. A unix socket file left by a process that is gone is replaced;
/// one that still accepts connections (another instance) is an `AddrInUse`
/// error, and a path that is not a socket is never removed. The caller keeps
/// the `SocketFile` for as long as the process serves (the serving task itself
/// may never be dropped).
pub fn bind(addr: &ListenAddr) -> io::Result<(Listener, Option<SocketFile>)> {
    match addr {
        ListenAddr::Tcp(a) => {
            Async::<std::net::TcpListener>::bind(*a).map(|l| (Listener::Tcp(l), None))
        }
        ListenAddr::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the path exists and is not a socket",
                    ));
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process listens on this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let l = Async::<std::os::unix::net::UnixListener>::bind(path)?;
            Ok((Listener::Unix(l), Some(SocketFile(path.clone()))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_unix_and_rejects_the_rest() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:9").unwrap(),
            ListenAddr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/x.sock").unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/x.sock").unwrap().to_string(),
            "unix:/run/x.sock"
        );
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(ListenAddr::parse(&format!("unix:/{}", "a".repeat(200))).is_err());
        assert!(ListenAddr::parse("localhost:80").is_err());
    }

    #[test]
    fn unix_bind_replaces_stale_sockets_only() {
        let dir = std::env::temp_dir().join(format!("mcp-tunnel-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("h.sock");
        let addr = ListenAddr::Unix(sock.clone());
        let first = bind(&addr).unwrap();
        // Live: a second bind must not steal it.
        assert_eq!(
            bind(&addr).err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        // Stale: the listener is gone but the file stays (a crash).
        let (l, f) = first;
        drop(l);
        std::mem::forget(f);
        assert!(sock.exists());
        let second = bind(&addr).unwrap();
        drop(second);
        assert!(!sock.exists(), "dropping the listener removes the file");
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(bind(&ListenAddr::Unix(plain.clone())).is_err());
        assert!(plain.exists(), "a regular file is never removed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
