//! Who may do what on which tunnel.
//!
//! Order of checks, so that answers never leak another org's tunnels:
//! 1. the credential: absent → 401 `missing_api_key`; unknown or revoked → 401
//!    `invalid_api_key` (a revoked key is indistinguishable from a wrong one);
//! 2. the role for the operation: wrong → 403 `tunnel_use_forbidden` (decided
//!    before the tunnel is looked at, so it says nothing about the tunnel);
//! 3. the tunnel id's syntax → 400 `invalid_tunnel_id_format`;
//! 4. the tunnel: unknown, **or owned by another org** → 404 `tunnel_not_found` —
//!    the same status, code and message, so org A cannot probe for org B's tunnels;
//! 5. the key's tunnel scope within its own org: not listed → 403 `tunnel_use_forbidden`.
//!
//! Client certificates (`relay serve --client-ca`): a tunnel's `agent_auth` /
//! `connector_auth` is `key` (the above, certificates ignored), `key+cert`
//! (the above, then a certificate whose subject CN or SAN DNS/URI name is
//! bound to the tunnel for the role: none → 401 `client_certificate_required`,
//! not bound → 403 `tunnel_use_forbidden`) or `cert` (no key needed; the same
//! certificate answers, any key sent is ignored). A `cert` tunnel is found by
//! its id before any credential is checked, so a caller without credentials
//! learns that such a tunnel exists (401 `client_certificate_required` rather
//! than `missing_api_key`); tunnel ids are 32 random characters (~165 bits), so this names only
//! tunnels the caller already knows.

use std::fmt;

use super::keys;
use super::state::{is_tunnel_id, AuthMode, KeyRecord, Role, State, Tunnel};
use crate::net::cert_names::{first_match, CertName};

/// The authenticated caller, as recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id, or `cert:NAME` for a caller admitted by certificate alone.
    pub key_id: String,
    pub org_id: String,
    pub role: Role,
    /// The bound certificate name that admitted the caller (`cert`, `key+cert`).
    pub cert_name: Option<String>,
    /// Admitted without a key (a `cert` tunnel).
    pub keyless: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    MissingKey,
    InvalidKey,
    WrongRole,
    InvalidTunnelId,
    TunnelNotFound,
    OutOfScope,
    /// The tunnel needs a client certificate and none was presented.
    CertRequired,
    /// The presented certificate names no name bound to the tunnel for the role.
    CertNotBound,
}

impl AuthError {
    pub fn status(self) -> u16 {
        match self {
            AuthError::MissingKey | AuthError::InvalidKey | AuthError::CertRequired => 401,
            AuthError::WrongRole | AuthError::OutOfScope | AuthError::CertNotBound => 403,
            AuthError::InvalidTunnelId => 400,
            AuthError::TunnelNotFound => 404,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingKey => "missing_api_key",
            AuthError::InvalidKey => "invalid_api_key",
            AuthError::WrongRole | AuthError::OutOfScope | AuthError::CertNotBound => {
                "tunnel_use_forbidden"
            }
            AuthError::CertRequired => "client_certificate_required",
            AuthError::InvalidTunnelId => "invalid_tunnel_id_format",
            AuthError::TunnelNotFound => "tunnel_not_found",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::MissingKey => "no API key: send Authorization: Bearer <key>",
            AuthError::InvalidKey => "the API key is not valid",
            AuthError::WrongRole => "this key's role does not allow this operation",
            AuthError::InvalidTunnelId => {
                "tunnel ids look like tunnel_ followed by 32 lowercase letters or digits"
            }
            AuthError::TunnelNotFound => "no such tunnel",
            AuthError::OutOfScope => "this key may not use this tunnel",
            AuthError::CertRequired => {
                "this tunnel requires a client certificate (TLS with a certificate from the relay's client CA)"
            }
            AuthError::CertNotBound => {
                "this client certificate is not bound to this tunnel for this role"
            }
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for AuthError {}

/// Step 1: the key behind a presented secret, if it is live.
pub fn authenticate<'s>(
    state: &'s State,
    credential: Option<&str>,
) -> Result<&'s KeyRecord, AuthError> {
    let secret = credential.ok_or(AuthError::MissingKey)?;
    let i = keys::find(secret, state.keys.iter().map(|k| k.sha256.as_str()))
        .ok_or(AuthError::InvalidKey)?;
    let key = state.keys.get(i).ok_or(AuthError::InvalidKey)?;
    if key.is_revoked() {
        return Err(AuthError::InvalidKey);
    }
    Ok(key)
}

/// Steps 1–5 for an operation on one tunnel that needs `role`, by key only
/// (as a caller without a client certificate).
pub fn authorize<'s>(
    state: &'s State,
    credential: Option<&str>,
    tunnel_id: &str,
    role: Role,
) -> Result<(Principal, &'s Tunnel), AuthError> {
    authorize_caller(state, credential, None, tunnel_id, role)
}

/// The full check: the key and, where the tunnel asks for one, the client
/// certificate's names (`None`: no certificate was presented).
pub fn authorize_caller<'s>(
    state: &'s State,
    credential: Option<&str>,
    cert: Option<&[CertName]>,
    tunnel_id: &str,
    role: Role,
) -> Result<(Principal, &'s Tunnel), AuthError> {
    let tunnel = is_tunnel_id(tunnel_id)
        .then(|| state.tunnel(tunnel_id))
        .flatten();
    let mode = tunnel.map_or(AuthMode::Key, |t| t.auth_mode(role));
    match (mode, tunnel) {
        (AuthMode::Cert, Some(t)) => {
            let name = bound_name(t, role, cert)?;
            Ok((
                Principal {
                    key_id: format!("cert:{name}"),
                    org_id: t.org_id.clone(),
                    role,
                    cert_name: Some(name),
                    keyless: true,
                },
                t,
            ))
        }
        _ => {
            let (mut p, t) = authorize_key(state, credential, tunnel_id, role)?;
            if t.auth_mode(role) == AuthMode::KeyAndCert {
                p.cert_name = Some(bound_name(t, role, cert)?);
            }
            Ok((p, t))
        }
    }
}

/// The first name bound to `t` for `role` that the certificate carries.
fn bound_name(t: &Tunnel, role: Role, cert: Option<&[CertName]>) -> Result<String, AuthError> {
    let names = cert.ok_or(AuthError::CertRequired)?;
    first_match(names, t.cert_names(role))
        .map(str::to_string)
        .ok_or(AuthError::CertNotBound)
}

fn authorize_key<'s>(
    state: &'s State,
    credential: Option<&str>,
    tunnel_id: &str,
    role: Role,
) -> Result<(Principal, &'s Tunnel), AuthError> {
    let key = authenticate(state, credential)?;
    let key_role = key.role().ok_or(AuthError::InvalidKey)?;
    if key_role != role {
        return Err(AuthError::WrongRole);
    }
    if !is_tunnel_id(tunnel_id) {
        return Err(AuthError::InvalidTunnelId);
    }
    let tunnel = state
        .tunnel(tunnel_id)
        .filter(|t| t.org_id == key.org_id)
        .ok_or(AuthError::TunnelNotFound)?;
    if !key.covers(tunnel_id) {
        return Err(AuthError::OutOfScope);
    }
    Ok((
        Principal {
            key_id: key.id.clone(),
            org_id: key.org_id.clone(),
            role: key_role,
            cert_name: None,
            keyless: false,
        },
        tunnel,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::keys::generate;
    use crate::relay::state::Org;

    struct World {
        state: State,
        t_a: String,
        t_a2: String,
        t_b: String,
        runtime_a: String,
        connector_a: String,
        connector_a_scoped: String,
        admin_a: String,
        revoked_a: String,
        connector_b: String,
    }

    fn world() -> World {
        let mut state = State::empty();
        for o in ["org_a", "org_b"] {
            state.orgs.push(Org {
                id: o.into(),
                name: o.into(),
            });
        }
        let t_a = format!("tunnel_{}", "a".repeat(32));
        let t_a2 = format!("tunnel_{}", "c".repeat(32));
        let t_b = format!("tunnel_{}", "b".repeat(32));
        for (t, o) in [(&t_a, "org_a"), (&t_a2, "org_a"), (&t_b, "org_b")] {
            state.tunnels.push(Tunnel {
                id: t.clone(),
                org_id: o.into(),
                name: String::new(),
                description: String::new(),
                created_at: String::new(),
                ..Default::default()
            });
        }
        let mut add = |org: &str, role: &str, tunnels: Vec<String>, revoked: bool| {
            let k = generate().unwrap();
            state.keys.push(KeyRecord {
                id: k.id,
                org_id: org.into(),
                role: role.into(),
                all_tunnels: tunnels.is_empty(),
                tunnels,
                sha256: k.sha256,
                created_at: String::new(),
                revoked_at: revoked.then(|| "2026-01-01T00:00:00Z".to_string()),
            });
            k.secret
        };
        let runtime_a = add("org_a", "runtime", vec![], false);
        let connector_a = add("org_a", "connector", vec![], false);
        let connector_a_scoped = add("org_a", "connector", vec![t_a.clone()], false);
        let admin_a = add("org_a", "admin", vec![], false);
        let revoked_a = add("org_a", "connector", vec![], true);
        let connector_b = add("org_b", "connector", vec![], false);
        state.validate().unwrap();
        World {
            state,
            t_a,
            t_a2,
            t_b,
            runtime_a,
            connector_a,
            connector_a_scoped,
            admin_a,
            revoked_a,
            connector_b,
        }
    }

    fn check(w: &World, key: Option<&str>, tunnel: &str, role: Role) -> Result<String, AuthError> {
        authorize(&w.state, key, tunnel, role).map(|(p, t)| format!("{}:{}", p.org_id, t.id))
    }

    #[test]
    fn matrix() {
        let w = world();
        let unknown = format!("tunnel_{}", "z".repeat(32));
        use AuthError::*;
        use Role::*;
        type Case<'a> = (Option<&'a str>, &'a str, Role, Result<(), AuthError>);
        let cases: Vec<Case<'_>> = vec![
            (None, &w.t_a, Connector, Err(MissingKey)),
            (Some("mtk_bogus"), &w.t_a, Connector, Err(InvalidKey)),
            (Some(&w.revoked_a), &w.t_a, Connector, Err(InvalidKey)),
            (Some(&w.connector_a), &w.t_a, Connector, Ok(())),
            (Some(&w.connector_a), &w.t_a2, Connector, Ok(())),
            (Some(&w.connector_a_scoped), &w.t_a, Connector, Ok(())),
            (
                Some(&w.connector_a_scoped),
                &w.t_a2,
                Connector,
                Err(OutOfScope),
            ),
            (Some(&w.runtime_a), &w.t_a, Runtime, Ok(())),
            (Some(&w.runtime_a), &w.t_a, Connector, Err(WrongRole)),
            (Some(&w.connector_a), &w.t_a, Runtime, Err(WrongRole)),
            (Some(&w.admin_a), &w.t_a, Connector, Err(WrongRole)),
            (Some(&w.admin_a), &w.t_a, Runtime, Err(WrongRole)),
            (
                Some(&w.connector_a),
                "tunnel_x",
                Connector,
                Err(InvalidTunnelId),
            ),
            (
                Some(&w.connector_a),
                &unknown,
                Connector,
                Err(TunnelNotFound),
            ),
            (Some(&w.connector_a), &w.t_b, Connector, Err(TunnelNotFound)),
            (Some(&w.connector_b), &w.t_b, Connector, Ok(())),
            (Some(&w.connector_b), &w.t_a, Connector, Err(TunnelNotFound)),
        ];
        for (i, (key, tunnel, role, want)) in cases.into_iter().enumerate() {
            let got = check(&w, key, tunnel, role).map(|_| ());
            assert_eq!(got, want, "case {i}");
        }
    }

    fn names(list: &[&str]) -> Vec<CertName> {
        use crate::net::cert_names::NameKind;
        list.iter()
            .map(|n| CertName {
                kind: NameKind::CommonName,
                value: n.to_string(),
            })
            .collect()
    }

    fn with_modes(w: &mut World, agent: AuthMode, connector: AuthMode) {
        let t = w.state.tunnels.iter_mut().find(|t| t.id == w.t_a).unwrap();
        t.set_auth_mode(Role::Runtime, agent);
        t.set_auth_mode(Role::Connector, connector);
        t.cert_names_mut(Role::Runtime)
            .unwrap()
            .push("agent-1".into());
        t.cert_names_mut(Role::Connector)
            .unwrap()
            .push("client-1".into());
        w.state.validate().unwrap();
    }

    #[test]
    fn cert_mode_admits_a_bound_certificate_without_a_key() {
        let mut w = world();
        with_modes(&mut w, AuthMode::Cert, AuthMode::Cert);
        let agent = names(&["agent-1"]);
        let client = names(&["client-1"]);
        let other = names(&["intruder"]);
        let run = |key: Option<&str>, cert: Option<&[CertName]>, t: &str, role| {
            authorize_caller(&w.state, key, cert, t, role).map(|(p, _)| p)
        };
        let p = run(None, Some(&agent), &w.t_a, Role::Runtime).unwrap();
        assert_eq!(p.key_id, "cert:agent-1");
        assert_eq!(p.org_id, "org_a");
        assert!(p.keyless);
        assert_eq!(p.cert_name.as_deref(), Some("agent-1"));
        // Any key sent along is ignored, valid or not.
        assert!(run(Some("mtk_bogus"), Some(&agent), &w.t_a, Role::Runtime).is_ok());
        assert!(run(None, Some(&client), &w.t_a, Role::Connector).is_ok());
        use AuthError::*;
        for (key, cert, role, want) in [
            (None, None, Role::Runtime, CertRequired),
            (
                Some(w.runtime_a.as_str()),
                None,
                Role::Runtime,
                CertRequired,
            ),
            (None, Some(&other[..]), Role::Runtime, CertNotBound),
            // A name bound for the other role does not cross over.
            (None, Some(&client[..]), Role::Runtime, CertNotBound),
            (None, Some(&agent[..]), Role::Connector, CertNotBound),
        ] {
            assert_eq!(run(key, cert, &w.t_a, role), Err(want));
        }
        assert_eq!(CertRequired.status(), 401);
        assert_eq!(CertRequired.code(), "client_certificate_required");
        assert_eq!(
            (CertNotBound.status(), CertNotBound.code()),
            (403, "tunnel_use_forbidden")
        );
        // Other tunnels keep asking for keys; a certificate there is ignored.
        assert_eq!(
            run(None, Some(&agent), &w.t_a2, Role::Runtime),
            Err(MissingKey)
        );
        assert!(run(Some(&w.runtime_a), Some(&other), &w.t_a2, Role::Runtime).is_ok());
    }

    #[test]
    fn key_and_cert_mode_needs_both() {
        let mut w = world();
        with_modes(&mut w, AuthMode::KeyAndCert, AuthMode::KeyAndCert);
        let agent = names(&["agent-1"]);
        let other = names(&["intruder"]);
        let run = |key: Option<&str>, cert: Option<&[CertName]>, t: &str, role| {
            authorize_caller(&w.state, key, cert, t, role).map(|(p, _)| p)
        };
        let p = run(Some(&w.runtime_a), Some(&agent), &w.t_a, Role::Runtime).unwrap();
        assert!(!p.keyless);
        assert_eq!(p.cert_name.as_deref(), Some("agent-1"));
        assert!(p.key_id.starts_with("key_"));
        use AuthError::*;
        assert_eq!(
            run(None, Some(&agent), &w.t_a, Role::Runtime),
            Err(MissingKey)
        );
        assert_eq!(
            run(Some(&w.runtime_a), None, &w.t_a, Role::Runtime),
            Err(CertRequired)
        );
        assert_eq!(
            run(Some(&w.runtime_a), Some(&other), &w.t_a, Role::Runtime),
            Err(CertNotBound)
        );
        // Key checks come first: another org's key still sees 404.
        assert_eq!(
            run(Some(&w.connector_b), Some(&agent), &w.t_a, Role::Connector),
            Err(TunnelNotFound)
        );
    }

    #[test]
    fn other_orgs_tunnel_is_indistinguishable_from_unknown() {
        let w = world();
        let unknown = format!("tunnel_{}", "9".repeat(32));
        let a = check(&w, Some(&w.connector_a), &w.t_b, Role::Connector).unwrap_err();
        let b = check(&w, Some(&w.connector_a), &unknown, Role::Connector).unwrap_err();
        assert_eq!(
            (a.status(), a.code(), a.message()),
            (b.status(), b.code(), b.message())
        );
    }

    #[test]
    fn statuses_and_codes() {
        assert_eq!(
            (AuthError::InvalidKey.status(), AuthError::InvalidKey.code()),
            (401, "invalid_api_key")
        );
        assert_eq!(
            (AuthError::WrongRole.status(), AuthError::WrongRole.code()),
            (403, "tunnel_use_forbidden")
        );
        assert_eq!(
            (AuthError::OutOfScope.status(), AuthError::OutOfScope.code()),
            (403, "tunnel_use_forbidden")
        );
        assert_eq!(
            (
                AuthError::TunnelNotFound.status(),
                AuthError::TunnelNotFound.code()
            ),
            (404, "tunnel_not_found")
        );
    }
}
