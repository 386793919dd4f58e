//! `mcp-tunnel relay …`: init, serve, tunnel and key administration.

use std::ffi::OsString;

/// Runs `mcp-tunnel relay` with the arguments after `relay`; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let _ = args;
    eprintln!("mcp-tunnel relay: not built yet");
    2
}
