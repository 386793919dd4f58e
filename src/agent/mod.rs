//! The agent runtime: poll the control plane, forward each command to the MCP
//! target, post the answers back.
//!
//! Threads: the async loop (single-threaded smol executor: polling decisions,
//! signals, health), one poll thread (the blocking long poll), one probe thread,
//! and `max-concurrent-requests` workers (MCP calls and response posts).

pub mod argv;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod dispatch;
pub mod doctor;
pub mod drain;
pub mod edge;
pub mod health;
pub mod lane;
pub mod metrics;
pub mod poller;
pub mod post;
pub mod random;
pub mod readiness;
pub mod resolver;
pub mod runtime;
pub mod secret;
pub mod startup;
pub mod target;
pub mod target_http;
pub mod target_stdio;
pub mod tcp_transport;
pub mod workers;

use std::ffi::OsString;

/// `mcp-tunnel agent …` (alias `run`); returns the exit code.
pub fn cli_main(args: Vec<OsString>) -> i32 {
    crate::ops::shutdown::hold_hangups();
    let env = |name: &str| std::env::var(name).ok();
    let cfg = match config::parse(args, &env) {
        Ok(config::Parsed::Run(cfg)) => cfg,
        Ok(config::Parsed::Help) => {
            print!("{}", config::help());
            return 0;
        }
        Err(e) => {
            eprintln!("mcp-tunnel agent: {e}");
            return 2;
        }
    };
    match &cfg.log_file {
        Some(path) => {
            if let Err(e) = crate::ops::log::init_file(cfg.log_level, cfg.log_format, path) {
                eprintln!(
                    "mcp-tunnel agent: invalid value for --{} ({}): cannot open {}: {}",
                    config::LOG_FILE.flag,
                    config::LOG_FILE.env,
                    path.display(),
                    e.kind()
                );
                return 2;
            }
        }
        None => crate::ops::log::init(cfg.log_level, cfg.log_format),
    }
    let shutdown = crate::ops::shutdown::Shutdown::new();
    runtime::run(
        *cfg,
        shutdown,
        runtime::RunOptions {
            signals: true,
            readiness: None,
        },
    )
}
