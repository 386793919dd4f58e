//! A real CONNECT proxy: Debian's tinyproxy, started in the foreground on a
//! free loopback port with a generated configuration, killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::tools;

pub struct Tinyproxy {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

pub struct ProxyConf<'a> {
    /// `BasicAuth user password` (tinyproxy allows only `[-a-z0-9._]` in both).
    pub basic_auth: Option<(&'a str, &'a str)>,
    /// Restrict CONNECT to these ports (none listed = all allowed).
    pub connect_ports: &'a [u16],
}

impl Tinyproxy {
    /// `None` (after a skip notice) when tinyproxy is unavailable.
    pub fn start(test: &str, conf: &ProxyConf<'_>) -> Option<Tinyproxy> {
        let Some(bin) = tools::require("tinyproxy", "tinyproxy") else {
            tools::skip(test, "tinyproxy", "tinyproxy");
            return None;
        };
        // The port is free when probed; tinyproxy may lose a race for it, so retry.
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "tinyproxy-{}-{nanos}-{attempt}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let log = dir.join("tinyproxy.log");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\n\
                 MaxClients 20\nAllow 127.0.0.1\n",
                log.display()
            );
            if let Some((user, pass)) = conf.basic_auth {
                text.push_str(&format!("BasicAuth {user} {pass}\n"));
            }
            for p in conf.connect_ports {
                text.push_str(&format!("ConnectPort {p}\n"));
            }
            let conf_path = dir.join("tinyproxy.conf");
            std::fs::write(&conf_path, text).unwrap();
            let mut child = Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn tinyproxy");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Tinyproxy {
                        child,
                        port,
                        dir,
                        log,
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("tinyproxy did not start listening");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url_with(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@127.0.0.1:{}", self.port)
    }

    /// How many CONNECT requests to 127.0.0.1:`port` tinyproxy logged.
    pub fn connects_to(&self, port: u16) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("CONNECT 127.0.0.1:{port} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
