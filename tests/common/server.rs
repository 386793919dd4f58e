//! A tiny blocking HTTPS (or plain HTTP) server on 127.0.0.1:0: answers every
//! request `200` with body `hello` (or `hello client <n>` when the TLS client
//! presented a certificate), or with a fixed JSON body, and counts the
//! requests it answered and the client certificates it was shown. And
//! [`TlsFront`], a TLS terminator in front of a plain HTTP server that records
//! the client certificates presented to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

pub struct TestServer {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    /// Leaf certificates (DER) clients presented, one per handshake.
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Server TLS config from PEM files; with `client_ca`, client certificates
/// chaining to it are required.
pub fn tls_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<ServerConfig> {
    tls_config_with(cert, key, client_ca.map(|c| vec![c]), false)
}

/// Asks every client for a certificate (chaining to one of `client_cas`)
/// but also admits clients without one: a server that sees whatever
/// certificate a client would present.
pub fn tls_config_asking(cert: &Path, key: &Path, client_cas: &[&Path]) -> Arc<ServerConfig> {
    tls_config_with(cert, key, Some(client_cas.to_vec()), true)
}

/// The DER of the first certificate in a PEM file (to compare with what a
/// server saw).
pub fn leaf_der(cert: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

fn tls_config_with(
    cert: &Path,
    key: &Path,
    client_cas: Option<Vec<&Path>>,
    optional: bool,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_cas {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                for c in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().unwrap())
        }
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

impl TestServer {
    /// `tls: None` serves plain HTTP.
    pub fn start(tls: Option<Arc<ServerConfig>>) -> TestServer {
        Self::start_with(tls, None)
    }

    /// Answers every request with this `application/json` body.
    pub fn start_json(tls: Option<Arc<ServerConfig>>, json: &str) -> TestServer {
        Self::start_with(tls, Some(json.to_string()))
    }

    fn start_with(tls: Option<Arc<ServerConfig>>, json: Option<String>) -> TestServer {
        let json = Arc::new(json);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, sn) = (served.clone(), stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, sn, tls, json) = (s.clone(), sn.clone(), tls.clone(), json.clone());
                std::thread::spawn(move || handle(conn, tls, json.as_deref(), &s, &sn));
            }
        });
        TestServer {
            addr,
            served,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// The leaf certificates clients presented (DER), in handshake order.
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    conn: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    json: Option<&str>,
    served: &AtomicUsize,
    seen: &Seen,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    match tls {
        None => respond(conn, json.unwrap_or("hello"), json.is_some(), served),
        Some(cfg) => {
            let Ok(sc) = ServerConnection::new(cfg) else {
                return;
            };
            let mut stream = StreamOwned::new(sc, conn);
            // Drive the handshake; a failing client ends here, after a
            // lingering close so it reads our alert rather than a reset.
            while stream.conn.is_handshaking() {
                if stream.conn.complete_io(&mut stream.sock).is_err() {
                    linger(&mut stream.sock);
                    return;
                }
            }
            record(&stream.conn, seen);
            let body = match (json, stream.conn.peer_certificates()) {
                (Some(j), _) => j.to_string(),
                (None, Some(chain)) => format!("hello client {}", chain.len()),
                (None, None) => "hello".to_string(),
            };
            respond(stream, &body, json.is_some(), served)
        }
    }
}

fn record(conn: &ServerConnection, seen: &Seen) {
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        seen.lock().unwrap().push(leaf.as_ref().to_vec());
    }
}

/// A TLS terminator on 127.0.0.1:0 in front of a plain HTTP server at
/// `backend`: each connection is handshaken (the client's certificate, if
/// any, recorded), then bytes are copied both ways until either side closes.
pub struct TlsFront {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    seen: Seen,
}

impl TlsFront {
    pub fn start(cfg: Arc<ServerConfig>, backend: SocketAddr) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let (h, sn) = (handshakes.clone(), seen.clone());
        // Detached like the fakes it fronts: it lives as long as the test binary.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (cfg, h, sn) = (cfg.clone(), h.clone(), sn.clone());
                std::thread::spawn(move || splice(conn, cfg, backend, &h, &sn));
            }
        });
        TlsFront {
            addr,
            handshakes,
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Completed handshakes.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The leaf certificates clients presented (DER).
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

fn splice(
    conn: TcpStream,
    cfg: Arc<ServerConfig>,
    backend: SocketAddr,
    handshakes: &AtomicUsize,
    seen: &Seen,
) {
    let Ok(sc) = ServerConnection::new(cfg) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tls = StreamOwned::new(sc, conn);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            linger(&mut tls.sock);
            return;
        }
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    record(&tls.conn, seen);
    let Ok(mut plain) = TcpStream::connect(backend) else {
        return;
    };
    // One thread, both directions: short read timeouts take turns (the
    // rustls stream cannot be split between threads). Bounded by a long
    // poll's length plus margin.
    let tick = Some(Duration::from_millis(5));
    let _ = tls.sock.set_read_timeout(tick);
    let _ = plain.set_read_timeout(tick);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 16 * 1024];
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    while std::time::Instant::now() < until {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if plain.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => break,
        }
        match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => break,
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Half-closes and reads what the client still sends (bounded), so closing
/// does not reset the connection and destroy the alert in flight.
fn linger(sock: &mut TcpStream) {
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = sock.read(&mut buf) {
        total += n;
        if n == 0 || total > 1024 * 1024 {
            break;
        }
    }
}

fn respond<S: Read + Write>(mut s: S, body: &str, is_json: bool, served: &AtomicUsize) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    };
    // Read the whole body before answering: closing a socket with unread
    // bytes sends a reset, which can reach the client before it has read
    // the answer (a flaky 502 in CI).
    let mut left = content_length(&head[..end]).saturating_sub(head.len() - end);
    while left > 0 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    let ctype = if is_json {
        "application/json"
    } else {
        "text/plain"
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Counted before the answer is written: a client that has read the
    // answer may check the count at once, before this thread runs again.
    served.fetch_add(1, Ordering::SeqCst);
    let _ = s.write_all(resp.as_bytes()).and_then(|()| s.flush());
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
