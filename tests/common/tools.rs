//! External programs the tests drive. Each is looked up on PATH; when absent
//! and we are root with apt-get, it is installed once (CI runs
//! scripts/test-deps.sh instead). A test skips only when neither works.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

fn on_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The program's path, installing the Debian package if needed and possible.
pub fn require(cmd: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = on_path(cmd) {
        return Some(p);
    }
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = on_path(cmd) {
        return Some(p);
    }
    if is_root() && on_path("apt-get").is_some() {
        eprintln!("installing {package} with apt-get (CI: scripts/test-deps.sh)");
        let quiet = |c: &mut Command| {
            c.env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let installed = quiet(Command::new("apt-get").args(["install", "-y", "-qq", package]))
            || (quiet(Command::new("apt-get").args(["update", "-qq"]))
                && quiet(Command::new("apt-get").args(["install", "-y", "-qq", package])));
        if installed {
            return on_path(cmd);
        }
    }
    None
}

/// Prints the skip notice the brief asks for; the caller then returns.
pub fn skip(test: &str, cmd: &str, package: &str) {
    eprintln!(
        "SKIP {test}: `{cmd}` not found and could not be installed \
         (apt-get install {package}, or run scripts/test-deps.sh)"
    );
}
