//! A private PKI made with the `openssl` CLI, once per test binary, in a
//! fresh directory under cargo's `CARGO_TARGET_TMPDIR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::tools;

pub struct Pki {
    pub dir: PathBuf,
    /// The CA the servers' and clients' certificates chain to.
    pub ca: PathBuf,
    /// Another CA: trusting it instead of `ca` is trusting the wrong CA.
    pub other_ca: PathBuf,
    /// Server for 127.0.0.1 and localhost.
    pub server: (PathBuf, PathBuf),
    /// Server certificate that expired in 2020.
    pub server_expired: (PathBuf, PathBuf),
    /// Server certificate for `wrong.example` only.
    pub server_wrong_host: (PathBuf, PathBuf),
    /// Client certificates (cert, key) by key form.
    pub client_pkcs8: (PathBuf, PathBuf),
    pub client_pkcs1: (PathBuf, PathBuf),
    pub client_sec1: (PathBuf, PathBuf),
    /// Signed by `other_ca`: a server trusting `ca` rejects it.
    pub client_untrusted: (PathBuf, PathBuf),
    /// Expired in 2020.
    pub client_expired: (PathBuf, PathBuf),
    /// CN `client-san`, SAN DNS `agent-7.corp.example` and URI `spiffe://corp/agent-7`.
    pub client_san: (PathBuf, PathBuf),
}

static PKI: OnceLock<Option<Pki>> = OnceLock::new();

/// The PKI, or `None` (after a skip notice) when openssl is unavailable.
pub fn pki(test: &str) -> Option<&'static Pki> {
    let p = PKI
        .get_or_init(|| tools::require("openssl", "openssl").map(|bin| make(&bin)))
        .as_ref();
    if p.is_none() {
        tools::skip(test, "openssl", "openssl");
    }
    p
}

fn run(bin: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ec_key(bin: &Path, dir: &Path, name: &str) {
    run(
        bin,
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
}

fn self_signed_ca(bin: &Path, dir: &Path, name: &str, cn: &str) {
    ec_key(bin, dir, &format!("{name}.key"));
    run(
        bin,
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

const SERVER_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                          extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
const WRONG_HOST_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                              extendedKeyUsage=serverAuth\nsubjectAltName=DNS:wrong.example\n";
const CLIENT_SAN_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
     extendedKeyUsage=clientAuth\nsubjectAltName=DNS:agent-7.corp.example,URI:spiffe://corp/agent-7\n";
const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                          extendedKeyUsage=clientAuth\n";

/// Signs `name.key` into `name.pem` with `ca` for 30 days, or for a window in
/// 2020 when `expired` (via `openssl ca`, the only 3.0 way to set dates).
fn issue(bin: &Path, dir: &Path, name: &str, ca: &str, ext: &str, expired: bool, serial: u32) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    let csr = format!("{name}.csr");
    run(
        bin,
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    if expired {
        let cadir = dir.join(format!("{name}-ca"));
        std::fs::create_dir_all(cadir.join("new")).unwrap();
        std::fs::write(cadir.join("index.txt"), "").unwrap();
        std::fs::write(cadir.join("serial"), format!("{serial:04X}\n")).unwrap();
        let conf = format!(
            "[ca]\ndefault_ca=edge\n[edge]\ndatabase={d}/index.txt\nnew_certs_dir={d}/new\n\
             serial={d}/serial\ndefault_md=sha256\npolicy=any\nunique_subject=no\n\
             copy_extensions=none\n[any]\ncommonName=supplied\n",
            d = cadir.display()
        );
        std::fs::write(cadir.join("ca.cnf"), conf).unwrap();
        run(
            bin,
            dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                &cadir.join("ca.cnf").display().to_string(),
                "-cert",
                &format!("{ca}.pem"),
                "-keyfile",
                &format!("{ca}.key"),
                "-in",
                &csr,
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &ext_file,
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
            ],
        );
    } else {
        run(
            bin,
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &serial.to_string(),
                "-days",
                "30",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &ext_file,
            ],
        );
    }
}

fn make(bin: &Path) -> Pki {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Under target/ (cargo's per-project test scratch), not the system /tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("edge-pki-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.as_path();

    self_signed_ca(bin, d, "ca", "Edge Test CA");
    self_signed_ca(bin, d, "other-ca", "Other Test CA");

    for (name, ext, ca, expired, serial) in [
        ("server", SERVER_EXT, "ca", false, 10),
        ("server-expired", SERVER_EXT, "ca", true, 11),
        ("server-wrong-host", WRONG_HOST_EXT, "ca", false, 12),
    ] {
        ec_key(bin, d, &format!("{name}.key"));
        issue(bin, d, name, ca, ext, expired, serial);
    }

    // Client keys in each PEM form the agent accepts.
    ec_key(bin, d, "client-pkcs8.key");
    issue(bin, d, "client-pkcs8", "ca", CLIENT_EXT, false, 20);
    run(
        bin,
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa8.key",
        ],
    );
    run(
        bin,
        d,
        &[
            "rsa",
            "-in",
            "rsa8.key",
            "-traditional",
            "-out",
            "client-pkcs1.key",
        ],
    );
    issue(bin, d, "client-pkcs1", "ca", CLIENT_EXT, false, 21);
    run(
        bin,
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "client-sec1.key",
        ],
    );
    issue(bin, d, "client-sec1", "ca", CLIENT_EXT, false, 22);
    ec_key(bin, d, "client-untrusted.key");
    issue(
        bin,
        d,
        "client-untrusted",
        "other-ca",
        CLIENT_EXT,
        false,
        23,
    );
    ec_key(bin, d, "client-expired.key");
    issue(bin, d, "client-expired", "ca", CLIENT_EXT, true, 24);
    ec_key(bin, d, "client-san.key");
    issue(bin, d, "client-san", "ca", CLIENT_SAN_EXT, false, 25);

    let pair = |n: &str| (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key")));
    Pki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server: pair("server"),
        server_expired: pair("server-expired"),
        server_wrong_host: pair("server-wrong-host"),
        client_pkcs8: pair("client-pkcs8"),
        client_pkcs1: pair("client-pkcs1"),
        client_sec1: pair("client-sec1"),
        client_untrusted: pair("client-untrusted"),
        client_expired: pair("client-expired"),
        client_san: pair("client-san"),
        dir,
    }
}
