//! A small MCP server (Streamable HTTP) compiled into the binary for `make run`
//! and the tests, so a fresh machine needs nothing else to see a real call.
//!
//! `mcp-tunnel sample-server --listen 127.0.0.1:0` prints
//! `listening on 127.0.0.1:PORT` once it accepts connections; the MCP endpoint
//! is `/mcp`. Tools: `echo`, `add`, `progress`. It has no authentication, so it
//! refuses a non-loopback address unless `--allow-remote` is given.
//!
//! - `rpc`: JSON-RPC dispatch (sans-IO).
//! - `tools`: the tools and their arguments.
//! - `http`: Streamable HTTP on top of `net::http_server`: sessions, SSE.

mod http;
mod rpc;
mod tools;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

use async_io::Async;
use smol::LocalExecutor;

use crate::net::http_server::{self, Handler, Limits};
use crate::ops::shutdown::{watch_signals, Shutdown};
use http::Verbosity;

const USAGE: &str = "\
Usage: mcp-tunnel sample-server [--listen ADDR] [--allow-remote] [--quiet | --trace]

A small MCP server (Streamable HTTP on /mcp) with the tools echo, add, progress.

Options:
  --listen ADDR     address to listen on (default 127.0.0.1:0, a free port);
                    prints `listening on ADDR` once ready
  --allow-remote    allow a non-loopback address (the server has no authentication)
  --quiet           no log line per request
  --trace           log MCP headers and bodies (truncated) of each request and answer
  -h, --help        print this help
";

#[derive(Debug, PartialEq, Eq)]
struct Options {
    listen: SocketAddr,
    allow_remote: bool,
    verbosity: Verbosity,
}

#[derive(Debug, PartialEq, Eq)]
enum UsageError {
    BadListen(String),
    MissingValue(&'static str),
    RemoteRefused(SocketAddr),
    Unexpected(String),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::BadListen(v) => write!(f, "--listen: {v:?} is not an IP:PORT address"),
            UsageError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            UsageError::RemoteRefused(a) => write!(
                f,
                "--listen: {a} is not a loopback address; the sample server has no authentication (add --allow-remote to insist)"
            ),
            UsageError::Unexpected(what) => write!(f, "{what} (see --help)"),
        }
    }
}

impl std::error::Error for UsageError {}

/// `Ok(None)`: help was asked for.
fn parse(args: Vec<OsString>) -> Result<Option<Options>, UsageError> {
    use lexopt::prelude::*;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut allow_remote = false;
    let mut verbosity = Verbosity::Lines;
    let mut parser = lexopt::Parser::from_args(args);
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(e) => return Err(UsageError::Unexpected(e.to_string())),
        };
        match arg {
            Long("listen") => {
                let value = parser
                    .value()
                    .map_err(|_| UsageError::MissingValue("--listen"))?;
                let text = value.to_string_lossy().into_owned();
                listen = text.parse().map_err(|_| UsageError::BadListen(text))?;
            }
            Long("allow-remote") => allow_remote = true,
            Long("quiet") => verbosity = Verbosity::Quiet,
            Long("trace") => verbosity = Verbosity::Trace,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(UsageError::Unexpected(other.unexpected().to_string())),
        }
    }
    if !allow_remote && !listen.ip().is_loopback() {
        return Err(UsageError::RemoteRefused(listen));
    }
    Ok(Some(Options {
        listen,
        allow_remote,
        verbosity,
    }))
}

/// Runs `mcp-tunnel sample-server` with the arguments after it; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let options = match parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("mcp-tunnel sample-server: {e}");
            return 2;
        }
    };
    match serve(&options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcp-tunnel sample-server: {e}");
            1
        }
    }
}

fn serve(options: &Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", options.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    let listener = Async::new(listener)?;
    {
        // Scripts wait for this line; it must not sit in a buffer.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }

    let server = Rc::new(http::SampleServer::new(options.verbosity));
    let handler: Rc<dyn Handler> = Rc::new(move |req| {
        let server = server.clone();
        async move { server.respond(req) }
    });
    let limits = Limits {
        drain: Duration::from_secs(2),
        ..Limits::default()
    };
    let ex = Rc::new(LocalExecutor::new());
    let shutdown = Shutdown::new();
    let signals = shutdown.clone();
    ex.spawn(async move {
        if let Err(e) = watch_signals(signals.clone(), || {}).await {
            // Without signal handling SIGTERM still ends the process, just not gracefully.
            eprintln!("mcp-tunnel sample-server: signal handling unavailable: {e}");
        }
    })
    .detach();
    smol::block_on(ex.run(http_server::serve_tcp(
        listener,
        handler,
        limits,
        ex.clone(),
        shutdown,
    )));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn defaults_to_a_free_loopback_port() {
        let o = parse(args(&[])).unwrap().unwrap();
        assert_eq!(o.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(o.verbosity, Verbosity::Lines);
        let traced = parse(args(&["--trace"])).unwrap().unwrap();
        assert_eq!(traced.verbosity, Verbosity::Trace);
    }

    #[test]
    fn usage_errors_name_the_flag() {
        assert_eq!(
            parse(args(&["--listen", "nowhere"])),
            Err(UsageError::BadListen("nowhere".into()))
        );
        assert_eq!(
            parse(args(&["--listen"])),
            Err(UsageError::MissingValue("--listen"))
        );
        assert!(matches!(
            parse(args(&["--bogus"])),
            Err(UsageError::Unexpected(_))
        ));
        let remote = parse(args(&["--listen", "0.0.0.0:8080"])).unwrap_err();
        assert!(remote.to_string().starts_with("--listen:"), "{remote}");
        assert!(parse(args(&["--listen", "0.0.0.0:8080", "--allow-remote"])).is_ok());
        assert_eq!(parse(args(&["--help"])), Ok(None));
        assert_eq!(main(args(&["--listen", "x"])), 2);
    }
}
