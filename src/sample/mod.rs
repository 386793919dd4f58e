//! A small MCP server (Streamable HTTP) compiled into the binary for `make run`
//! and the tests, so a fresh machine needs nothing else to see a real call.

use std::ffi::OsString;

/// Runs `mcp-tunnel sample-server` with the arguments after it; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let _ = args;
    eprintln!("mcp-tunnel sample-server: not built yet");
    2
}
