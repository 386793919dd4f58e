//! Starting and stopping one stdio MCP server process: no shell, its own
//! process group (so a wrapper such as `npx` takes its children along when it
//! is signalled), and a reap on every path so no zombie is left.

use std::io;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Variables that hold our control-plane key; a child never inherits them.
const SCRUBBED_ENV: &[&str] = &["CONTROL_PLANE_API_KEY", "OPENAI_API_KEY"];
const POLL_EXIT: Duration = Duration::from_millis(20);

pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

pub fn spawn(argv: &[String]) -> io::Result<Spawned> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // Cannot happen with piped stdio; never leave the process behind.
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other("child pipes missing"));
    };
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout,
        stderr,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

#[cfg(unix)]
mod sys {
    // std links the C library already; this is the one call std does not wrap
    // (it only offers SIGKILL to the direct child).
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }

    /// Signals the process group led by `pid`, else the process itself.
    /// The caller guarantees `pid` is an unreaped child of ours, so the id
    /// cannot have been reused.
    pub fn signal(pid: u32, term: bool) -> bool {
        let Ok(p) = i32::try_from(pid) else {
            return false;
        };
        if p <= 1 {
            return false;
        }
        let sig = if term { 15 } else { 9 };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { kill(-p, sig) == 0 || kill(p, sig) == 0 }
    }
}

/// Signals by process id; the caller guarantees the child is not reaped yet.
#[cfg(unix)]
pub fn signal_pid(pid: u32, sig: Sig) -> bool {
    sys::signal(pid, sig == Sig::Term)
}

/// Sends `sig` to a child that has not been reaped yet.
pub fn signal(child: &mut Child, sig: Sig) {
    #[cfg(unix)]
    {
        if sys::signal(child.id(), sig == Sig::Term) {
            return;
        }
    }
    if sig == Sig::Kill {
        let _ = child.kill();
    }
}

/// Waits up to `limit` for the child to exit (reaping it).
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // ECHILD: someone else reaped it; nothing left to wait for.
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        std::thread::sleep(POLL_EXIT.min(until - now));
    }
}

/// The stop sequence once stdin is closed: wait `close_grace`, SIGTERM, wait
/// `term_grace`, SIGKILL, then a blocking reap. Returns the exit status when known.
pub fn stop(child: &mut Child, close_grace: Duration, term_grace: Duration) -> Option<ExitStatus> {
    if let Some(s) = wait_for_exit(child, close_grace) {
        return Some(s);
    }
    signal(child, Sig::Term);
    if let Some(s) = wait_for_exit(child, term_grace) {
        return Some(s);
    }
    signal(child, Sig::Kill);
    child.wait().ok()
}
