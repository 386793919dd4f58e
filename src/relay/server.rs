//! Wiring: the route table, the state watcher, the listener.

use super::cli::ServeConfig;

pub fn run(cfg: ServeConfig, out: &mut dyn std::io::Write) -> i32 {
    let _ = out;
    let _ = cfg;
    eprintln!("mcp-tunnel relay: serve not built yet");
    1
}
