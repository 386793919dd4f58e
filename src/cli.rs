//! Top-level command line: dispatch to `agent` (alias `run`), `doctor`,
//! `relay`, `sample-server`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::ffi::OsString;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn usage() -> String {
    let mut out = format!(
        "mcp-tunnel {VERSION}: reach MCP servers inside private networks\n\n\
         Usage: mcp-tunnel <COMMAND> [OPTIONS]\n\nCommands:\n"
    );
    #[cfg(feature = "agent")]
    out.push_str(
        "  agent, run      poll the tunnel control plane and forward MCP requests\n  \
         doctor          check the agent's path (DNS, proxy, TLS, key, MCP) with its options\n",
    );
    #[cfg(feature = "relay")]
    out.push_str(
        "  relay           the self-hosted control plane and MCP endpoint\n  \
         sample-server   a small MCP server for trying the tunnel\n",
    );
    out.push_str(
        "\nOptions:\n  -h, --help      print this help\n  -V, --version   print the version\n\n\
         Run `mcp-tunnel <COMMAND> --help` for the options of a command.\n",
    );
    out
}

/// Runs the process; returns the exit code.
pub fn main() -> i32 {
    run(std::env::args_os().skip(1).collect())
}

/// Dispatches `args` (without the program name).
pub fn run(args: Vec<OsString>) -> i32 {
    let mut it = args.into_iter();
    let Some(first) = it.next() else {
        eprint!("{}", usage());
        return 2;
    };
    let rest: Vec<OsString> = it.collect();
    match first.to_str() {
        Some("-h") | Some("--help") | Some("help") => {
            print!("{}", usage());
            0
        }
        Some("-V") | Some("--version") | Some("version") => {
            println!("mcp-tunnel {VERSION}");
            0
        }
        #[cfg(feature = "agent")]
        Some("agent") | Some("run") => crate::agent::cli_main(rest),
        #[cfg(feature = "agent")]
        Some("doctor") => crate::agent::doctor::main(rest),
        #[cfg(feature = "relay")]
        Some("relay") => crate::relay::cli::main(rest),
        #[cfg(feature = "relay")]
        Some("sample-server") => crate::sample::main(rest),
        _ => {
            let _ = rest;
            eprintln!(
                "mcp-tunnel: unknown command {:?} (see mcp-tunnel --help)",
                first.to_string_lossy()
            );
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn help_version_and_unknown() {
        assert_eq!(run(args(&["--help"])), 0);
        assert_eq!(run(args(&["--version"])), 0);
        assert_eq!(run(args(&["frobnicate"])), 2);
        assert_eq!(run(args(&[])), 2);
        assert!(usage().contains("agent"));
        #[cfg(feature = "agent")]
        assert!(usage().contains("doctor"));
    }
}
