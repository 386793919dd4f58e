//! The relay's persistent model (orgs, tunnels, keys) and its state directory.
//!
//! The file is the single source of truth shared by `relay serve` and the admin
//! CLI: the CLI rewrites it atomically (tmp + fsync + rename + fsync dir) under a
//! lock file, and the server notices the change by polling its metadata, so
//! revocations apply without a restart. A file that does not parse or does not
//! pass validation is refused — never silently replaced by an empty state.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use miniserde::{json, Deserialize, Serialize};

/// The only file format version this build reads and writes.
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
/// A state file beyond this is refused rather than read into memory.
const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_RECORDS: usize = 100_000;
/// A lock older than this belongs to a crashed CLI run and is broken.
const STALE_LOCK: Duration = Duration::from_secs(30);
const LOCK_WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct State {
    pub version: u32,
    pub orgs: Vec<Org>,
    pub tunnels: Vec<Tunnel>,
    pub keys: Vec<KeyRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Org {
    pub id: String,
    pub name: String,
}

/// A tunnel. The certificate fields are optional so that state files written
/// before client certificates existed load unchanged (absent = key only).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Tunnel {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
    /// How agents authenticate ([`AuthMode`]); absent = `key`.
    pub agent_auth: Option<String>,
    /// Client-certificate names (subject CN, SAN DNS or URI) agents may present.
    pub agent_cert_names: Option<Vec<String>>,
    /// How connector callers authenticate; absent = `key`.
    pub connector_auth: Option<String>,
    /// Client-certificate names connector callers may present.
    pub connector_cert_names: Option<Vec<String>>,
}

/// What a caller of one role must present on a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// An API key of the role (the default).
    Key,
    /// A verified client certificate whose name is bound to the tunnel; no key.
    Cert,
    /// Both.
    KeyAndCert,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "key" => Some(AuthMode::Key),
            "cert" => Some(AuthMode::Cert),
            "key+cert" => Some(AuthMode::KeyAndCert),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "key",
            AuthMode::Cert => "cert",
            AuthMode::KeyAndCert => "key+cert",
        }
    }

    pub fn needs_cert(self) -> bool {
        self != AuthMode::Key
    }
}

/// Certificate names bound to one tunnel and role, at most this many.
pub const MAX_CERT_NAMES: usize = 100;
/// A bound name's length cap (DNS names are ≤ 253 bytes).
pub const MAX_CERT_NAME_LEN: usize = 255;

/// A name that can be bound: 1..=255 bytes, printable, no spaces.
pub fn valid_cert_name(name: &str) -> bool {
    (1..=MAX_CERT_NAME_LEN).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Tunnel {
    /// The mode for callers of `role` (admins never use tunnels: `Key`).
    pub fn auth_mode(&self, role: Role) -> AuthMode {
        let raw = match role {
            Role::Runtime => &self.agent_auth,
            Role::Connector => &self.connector_auth,
            Role::Admin => return AuthMode::Key,
        };
        raw.as_deref()
            .and_then(AuthMode::parse)
            .unwrap_or(AuthMode::Key)
    }

    pub fn cert_names(&self, role: Role) -> &[String] {
        let names = match role {
            Role::Runtime => &self.agent_cert_names,
            Role::Connector => &self.connector_cert_names,
            Role::Admin => return &[],
        };
        names.as_deref().unwrap_or(&[])
    }

    pub fn cert_names_mut(&mut self, role: Role) -> Option<&mut Vec<String>> {
        match role {
            Role::Runtime => Some(self.agent_cert_names.get_or_insert_with(Vec::new)),
            Role::Connector => Some(self.connector_cert_names.get_or_insert_with(Vec::new)),
            Role::Admin => None,
        }
    }

    pub fn set_auth_mode(&mut self, role: Role, mode: AuthMode) {
        // `key` is stored as absent, so such a state stays readable by older builds.
        let v = (mode != AuthMode::Key).then(|| mode.as_str().to_string());
        match role {
            Role::Runtime => self.agent_auth = v,
            Role::Connector => self.connector_auth = v,
            Role::Admin => {}
        }
    }

    fn validate_auth(&self) -> Result<(), String> {
        for (what, mode, names) in [
            ("agent", &self.agent_auth, &self.agent_cert_names),
            (
                "connector",
                &self.connector_auth,
                &self.connector_cert_names,
            ),
        ] {
            if let Some(m) = mode {
                if AuthMode::parse(m).is_none() {
                    return Err(format!("tunnel {} has unknown {what}_auth {m:?}", self.id));
                }
            }
            let names = names.as_deref().unwrap_or(&[]);
            if names.len() > MAX_CERT_NAMES {
                return Err(format!(
                    "tunnel {} has more than {MAX_CERT_NAMES} {what} certificate names",
                    self.id
                ));
            }
            if let Some(bad) = names.iter().find(|n| !valid_cert_name(n)) {
                return Err(format!(
                    "tunnel {} has an invalid {what} certificate name {bad:?}",
                    self.id
                ));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub org_id: String,
    /// `runtime`, `connector` or `admin` (see [`Role`]).
    pub role: String,
    /// Tunnels this key may use; ignored when `all_tunnels`.
    pub tunnels: Vec<String>,
    /// The key is valid for every tunnel of its org, present and future.
    pub all_tunnels: bool,
    /// Lowercase hex SHA-256 of the secret; the secret itself is never stored.
    pub sha256: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Polls and responds on its tunnels (the agent).
    Runtime,
    /// Calls `/v1/mcp` on its tunnels (the AI client).
    Connector,
    /// Administration; no tunnel traffic.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "runtime" => Some(Role::Runtime),
            "connector" => Some(Role::Connector),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Runtime => "runtime",
            Role::Connector => "connector",
            Role::Admin => "admin",
        }
    }
}

impl KeyRecord {
    pub fn role(&self) -> Option<Role> {
        Role::parse(&self.role)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    pub fn covers(&self, tunnel_id: &str) -> bool {
        self.all_tunnels || self.tunnels.iter().any(|t| t == tunnel_id)
    }
}

impl State {
    pub fn empty() -> State {
        State {
            version: STATE_VERSION,
            orgs: Vec::new(),
            tunnels: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub fn tunnel(&self, id: &str) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.id == id)
    }

    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.id == id)
    }

    /// Checks every invariant the server relies on; the first violation is the error.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != STATE_VERSION {
            return Err(format!(
                "unsupported state version {} (this build reads {STATE_VERSION})",
                self.version
            ));
        }
        if self.orgs.len() + self.tunnels.len() + self.keys.len() > MAX_RECORDS {
            return Err(format!("more than {MAX_RECORDS} records"));
        }
        let mut ids = HashSet::new();
        for org in &self.orgs {
            if !valid_id(&org.id, "org_") {
                return Err(format!("invalid org id {:?}", org.id));
            }
            if !ids.insert(org.id.as_str()) {
                return Err(format!("duplicate id {:?}", org.id));
            }
        }
        for t in &self.tunnels {
            if !is_tunnel_id(&t.id) {
                return Err(format!("invalid tunnel id {:?}", t.id));
            }
            if !ids.insert(t.id.as_str()) {
                return Err(format!("duplicate id {:?}", t.id));
            }
            if self.org(&t.org_id).is_none() {
                return Err(format!("tunnel {} names unknown org {:?}", t.id, t.org_id));
            }
            t.validate_auth()?;
        }
        let mut hashes = HashSet::new();
        for k in &self.keys {
            if !valid_id(&k.id, "key_") {
                return Err(format!("invalid key id {:?}", k.id));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(format!("duplicate id {:?}", k.id));
            }
            if self.org(&k.org_id).is_none() {
                return Err(format!("key {} names unknown org {:?}", k.id, k.org_id));
            }
            if k.role().is_none() {
                return Err(format!("key {} has unknown role {:?}", k.id, k.role));
            }
            if k.sha256.len() != 64
                || !k
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("key {} has a malformed hash", k.id));
            }
            if !hashes.insert(k.sha256.as_str()) {
                return Err(format!("key {} duplicates another key's hash", k.id));
            }
        }
        Ok(())
    }
}

/// Tunnel ids look like `tunnel_` + 32 lowercase alphanumerics.
pub fn is_tunnel_id(s: &str) -> bool {
    match s.strip_prefix("tunnel_") {
        Some(rest) => {
            rest.len() == 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }
        None => false,
    }
}

fn valid_id(s: &str, prefix: &str) -> bool {
    match s.strip_prefix(prefix) {
        Some(rest) => {
            (1..=64).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }
        None => false,
    }
}

#[derive(Debug)]
pub enum StateError {
    /// `init` found a state already there.
    AlreadyExists(PathBuf),
    /// No state file: the directory was never initialised.
    Missing(PathBuf),
    /// The file exists but is not a valid state; it is left untouched.
    Corrupt { path: PathBuf, why: String },
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Another CLI run holds the lock.
    Locked(PathBuf),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::AlreadyExists(p) => write!(
                f,
                "{} already holds a relay state; refusing to overwrite it",
                p.display()
            ),
            StateError::Missing(p) => write!(
                f,
                "no relay state at {} (run `mcp-tunnel relay init --state DIR` first)",
                p.display()
            ),
            StateError::Corrupt { path, why } => write!(
                f,
                "relay state {} is corrupt: {why}; refusing to use or overwrite it (restore it from a backup)",
                path.display()
            ),
            StateError::Io { path, op, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            StateError::Locked(p) => write!(
                f,
                "relay state is locked by another command ({}); retry, or remove the lock if no command runs",
                p.display()
            ),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, op, source }
}

/// A state directory on disk.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Creates the directory (0700) and writes `state` as its first state.
    pub fn init(&self, state: &State) -> Result<(), StateError> {
        let file = self.file();
        if file.exists() {
            return Err(StateError::AlreadyExists(self.dir.clone()));
        }
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io_err(&self.dir, "create directory"))?;
        }
        // An existing empty directory (e.g. from mktemp -d) is tightened too.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.dir, "set permissions of"))?;
        let _lock = self.lock()?;
        if file.exists() {
            return Err(StateError::AlreadyExists(self.dir.clone()));
        }
        self.store(state)
    }

    pub fn load(&self) -> Result<State, StateError> {
        let path = self.file();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::Missing(self.dir.clone()))
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let mut text = String::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    StateError::Corrupt {
                        path: path.clone(),
                        why: "not UTF-8".into(),
                    }
                } else {
                    io_err(&path, "read")(e)
                }
            })?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(StateError::Corrupt {
                path,
                why: format!("larger than {MAX_STATE_BYTES} bytes"),
            });
        }
        let state: State = json::from_str(&text).map_err(|_| StateError::Corrupt {
            path: path.clone(),
            why: "not a valid state document (JSON syntax or fields)".into(),
        })?;
        state
            .validate()
            .map_err(|why| StateError::Corrupt { path, why })?;
        Ok(state)
    }

    /// Atomic replace: readers see the old file or the new one, never a mix.
    pub fn store(&self, state: &State) -> Result<(), StateError> {
        let path = self.file();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut text = json::to_string(state);
        text.push('\n');
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp, "create"))?;
            f.write_all(text.as_bytes())
                .map_err(io_err(&tmp, "write"))?;
            f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename into"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir, "fsync directory"))?;
        Ok(())
    }

    /// Load, change, store — under the lock, so two CLI runs never lose each other's change.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, String>,
    ) -> Result<Result<T, String>, StateError> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        match change(&mut state) {
            Ok(v) => {
                // Never write something the server would refuse to load.
                state.validate().map_err(|why| StateError::Corrupt {
                    path: self.file(),
                    why: format!("change rejected: {why}"),
                })?;
                self.store(&state)?;
                Ok(Ok(v))
            }
            Err(msg) => Ok(Err(msg)),
        }
    }

    fn lock(&self) -> Result<LockGuard, StateError> {
        let path = self.dir.join(LOCK_FILE);
        let started = Instant::now();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(LockGuard { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(StateError::Locked(path));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io_err(&path, "create lock")(e)),
            }
        }
    }
}

struct LockGuard {
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What identifies one version of the file without reading it. A rename gives a
/// new inode; mtime/ctime/size catch in-place edits by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn signature(path: &Path) -> io::Result<Signature> {
    let m = fs::metadata(path)?;
    Ok(Signature {
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Notices a changed state file; the server calls `poll` every few hundred ms and on SIGHUP.
#[derive(Debug)]
pub struct Watcher {
    dir: StateDir,
    seen: Option<Signature>,
}

impl Watcher {
    /// Loads the state once (errors are fatal at startup) and remembers its version.
    pub fn start(dir: StateDir) -> Result<(Watcher, State), StateError> {
        let seen = signature(&dir.file()).ok();
        let state = dir.load()?;
        Ok((Watcher { dir, seen }, state))
    }

    /// `Ok(Some)` when the file changed and the new one is valid; `Ok(None)` when
    /// unchanged; `Err` when it changed into something unusable (the caller keeps
    /// the old state and logs). A bad version is not retried until the file changes again.
    pub fn poll(&mut self, force: bool) -> Result<Option<State>, StateError> {
        let path = self.dir.file();
        let now = match signature(&path) {
            Ok(s) => s,
            // Reported once; the file's return is a change like any other.
            Err(_) if self.seen.is_none() && !force => return Ok(None),
            Err(e) => {
                self.seen = None;
                return Err(io_err(&path, "stat")(e));
            }
        };
        if !force && self.seen == Some(now) {
            return Ok(None);
        }
        self.seen = Some(now);
        self.dir.load().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        crate::relay::keys::fill_random(&mut bytes).unwrap();
        let p = std::env::temp_dir().join(format!(
            "mcp-tunnel-state-{name}-{}-{}",
            std::process::id(),
            crate::relay::keys::hex(&bytes)
        ));
        p
    }

    fn sample() -> State {
        let mut s = State::empty();
        s.orgs.push(Org {
            id: "org_a1".into(),
            name: "a".into(),
        });
        s.tunnels.push(Tunnel {
            id: format!("tunnel_{}", "a".repeat(32)),
            org_id: "org_a1".into(),
            name: "t".into(),
            description: String::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        });
        s.keys.push(KeyRecord {
            id: "key_1".into(),
            org_id: "org_a1".into(),
            role: "runtime".into(),
            tunnels: vec![],
            all_tunnels: true,
            sha256: "0".repeat(64),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: None,
        });
        s
    }

    #[test]
    fn init_store_load_roundtrip_and_mode() {
        let d = tmpdir("rt");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fmode = fs::metadata(sd.file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(fmode, 0o600);
        assert_eq!(sd.load().unwrap(), sample());
        assert!(!d.join("state.json.tmp").exists(), "tmp file left behind");
        assert!(!d.join(LOCK_FILE).exists(), "lock left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn init_refuses_existing_state() {
        let d = tmpdir("exists");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        let before = fs::read(sd.file()).unwrap();
        assert!(matches!(
            sd.init(&State::empty()),
            Err(StateError::AlreadyExists(_))
        ));
        assert_eq!(fs::read(sd.file()).unwrap(), before);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_file_is_refused_and_left_alone() {
        let d = tmpdir("corrupt");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        for bad in [
            b"{\"version\":1,\"orgs\":[" as &[u8],
            b"",
            b"\xff\xfe",
            b"{\"version\":2,\"orgs\":[],\"tunnels\":[],\"keys\":[]}",
            b"{\"version\":1,\"orgs\":[],\"tunnels\":[{\"id\":\"x\",\"org_id\":\"o\",\"name\":\"\",\"description\":\"\",\"created_at\":\"\"}],\"keys\":[]}",
        ] {
            fs::write(sd.file(), bad).unwrap();
            let err = sd.load().unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("corrupt"));
            // An update must not "repair" it by writing a fresh state.
            let r = sd.update(|s| {
                s.orgs.clear();
                Ok(())
            });
            assert!(r.is_err());
            assert_eq!(fs::read(sd.file()).unwrap(), bad);
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_state_is_a_clear_error() {
        let d = tmpdir("missing");
        let err = StateDir::new(&d).load().unwrap_err();
        assert!(matches!(err, StateError::Missing(_)));
        assert!(err.to_string().contains("relay init"));
    }

    #[test]
    fn update_rejects_invalid_change_without_writing() {
        let d = tmpdir("inval");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        let r = sd.update(|s| {
            s.tunnels[0].org_id = "org_nope".into();
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(sd.load().unwrap(), sample());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn watcher_sees_changes_and_keeps_going_after_corruption() {
        let d = tmpdir("watch");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        let (mut w, s0) = Watcher::start(sd.clone()).unwrap();
        assert_eq!(s0, sample());
        assert!(w.poll(false).unwrap().is_none());
        sd.update(|s| {
            s.keys[0].revoked_at = Some("2026-01-02T00:00:00Z".into());
            Ok(())
        })
        .unwrap()
        .unwrap();
        let s1 = w.poll(false).unwrap().expect("change seen");
        assert!(s1.keys[0].is_revoked());
        assert!(w.poll(false).unwrap().is_none());
        fs::write(sd.file(), b"garbage").unwrap();
        assert!(matches!(w.poll(false), Err(StateError::Corrupt { .. })));
        // Not reported again until it changes again.
        assert!(w.poll(false).unwrap().is_none());
        sd.store(&sample()).unwrap();
        assert_eq!(w.poll(false).unwrap(), Some(sample()));
        assert_eq!(w.poll(true).unwrap(), Some(sample()));
        // A vanished file is reported once, and its return is picked up.
        fs::remove_file(sd.file()).unwrap();
        assert!(matches!(w.poll(false), Err(StateError::Io { .. })));
        assert!(w.poll(false).unwrap().is_none());
        sd.store(&sample()).unwrap();
        assert_eq!(w.poll(false).unwrap(), Some(sample()));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let d = tmpdir("optional");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        let text = fs::read_to_string(sd.file())
            .unwrap()
            .replace(",\"revoked_at\":null", "");
        assert!(!text.contains("revoked_at"));
        fs::write(sd.file(), text).unwrap();
        assert_eq!(sd.load().unwrap(), sample());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn state_files_without_certificate_fields_load_as_key_only() {
        let d = tmpdir("oldschema");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        // Exactly what a build before client certificates wrote.
        let old = format!(
            "{{\"version\":1,\"orgs\":[{{\"id\":\"org_a1\",\"name\":\"a\"}}],\"tunnels\":[{{\"id\":\"tunnel_{}\",\"org_id\":\"org_a1\",\"name\":\"t\",\"description\":\"\",\"created_at\":\"2026-01-01T00:00:00Z\"}}],\"keys\":[]}}\n",
            "a".repeat(32)
        );
        fs::write(sd.file(), old).unwrap();
        let s = sd.load().unwrap();
        let t = &s.tunnels[0];
        assert_eq!(t.auth_mode(Role::Runtime), AuthMode::Key);
        assert_eq!(t.auth_mode(Role::Connector), AuthMode::Key);
        assert!(t.cert_names(Role::Runtime).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn certificate_settings_round_trip_and_are_validated() {
        let d = tmpdir("certs");
        let sd = StateDir::new(&d);
        sd.init(&sample()).unwrap();
        sd.update(|s| {
            let t = &mut s.tunnels[0];
            t.set_auth_mode(Role::Runtime, AuthMode::Cert);
            t.set_auth_mode(Role::Connector, AuthMode::KeyAndCert);
            t.cert_names_mut(Role::Runtime)
                .unwrap()
                .push("agent-1".into());
            Ok(())
        })
        .unwrap()
        .unwrap();
        let s = sd.load().unwrap();
        assert_eq!(s.tunnels[0].auth_mode(Role::Runtime), AuthMode::Cert);
        assert_eq!(
            s.tunnels[0].auth_mode(Role::Connector),
            AuthMode::KeyAndCert
        );
        assert_eq!(s.tunnels[0].cert_names(Role::Runtime), ["agent-1"]);
        for bad in [
            |t: &mut Tunnel| t.agent_auth = Some("password".into()),
            |t: &mut Tunnel| t.connector_cert_names = Some(vec!["a b".into()]),
            |t: &mut Tunnel| t.agent_cert_names = Some(vec![String::new()]),
            |t: &mut Tunnel| t.agent_cert_names = Some(vec!["n".into(); MAX_CERT_NAMES + 1]),
        ] {
            let r = sd.update(|s| {
                bad(&mut s.tunnels[0]);
                Ok(())
            });
            assert!(r.is_err());
        }
        assert_eq!(sd.load().unwrap(), s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tunnel_id_format() {
        assert!(is_tunnel_id(&format!("tunnel_{}", "a1".repeat(16))));
        assert!(!is_tunnel_id(&format!("tunnel_{}", "A1".repeat(16))));
        assert!(!is_tunnel_id(&format!("tunnel_{}", "a".repeat(31))));
        assert!(!is_tunnel_id("tunnel_"));
        assert!(!is_tunnel_id(&format!("tunnelx{}", "a".repeat(32))));
    }
}
