//! The agent runtime: poll the control plane, forward each command to the MCP
//! target, post the answers back.

pub mod client;
pub mod config;
pub mod lane;
pub mod random;
pub mod readiness;
pub mod secret;

use std::ffi::OsString;

/// `mcp-tunnel agent …` (alias `run`); returns the exit code.
pub fn cli_main(args: Vec<OsString>) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(args, &env) {
        Ok(config::Parsed::Run(_)) => {
            eprintln!("mcp-tunnel agent: the runtime is not built yet");
            1
        }
        Ok(config::Parsed::Help) => {
            print!("{}", config::help());
            0
        }
        Err(e) => {
            eprintln!("mcp-tunnel agent: {e}");
            2
        }
    }
}
