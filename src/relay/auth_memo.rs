//! The last verdict of one keep-alive connection, so that an agent's polls and
//! answers (and a connector's requests) on the same connection do not hash the
//! same key again for every request.
//!
//! A verdict is reused only for the same credential, the same client
//! certificate, the same tunnel and role, and the same state generation: any
//! reload (a revocation, a deleted tunnel, a changed auth mode) installs a new
//! generation, so the next request is checked afresh within the state poll's
//! 250 ms, exactly as without the memo. Only successes are kept; a failure is
//! recomputed each time.

use super::auth::Principal;
use super::keys;
use super::state::Role;

/// One connection's last successful authorization.
#[derive(Default)]
pub struct AuthMemo {
    last: Option<Verdict>,
}

struct Verdict {
    generation: u64,
    /// The presented secret (empty: none was presented), wiped on drop.
    credential: Vec<u8>,
    client_cert: Option<Vec<u8>>,
    tunnel_id: String,
    role: Role,
    principal: Principal,
}

impl Drop for Verdict {
    fn drop(&mut self) {
        self.credential.fill(0);
        std::hint::black_box(&self.credential);
    }
}

impl AuthMemo {
    /// The principal of the last verdict, if it was made for exactly these
    /// inputs in `generation`.
    pub fn recall(
        &self,
        generation: u64,
        credential: Option<&str>,
        client_cert: Option<&[u8]>,
        tunnel_id: &str,
        role: Role,
    ) -> Option<&Principal> {
        let v = self.last.as_ref()?;
        let same = v.generation == generation
            && v.role == role
            && v.tunnel_id == tunnel_id
            && v.client_cert.as_deref() == client_cert
            && keys::constant_time_eq(&v.credential, credential.unwrap_or("").as_bytes());
        same.then_some(&v.principal)
    }

    /// Keeps a successful verdict, replacing the previous one.
    pub fn remember(
        &mut self,
        generation: u64,
        credential: Option<&str>,
        client_cert: Option<&[u8]>,
        tunnel_id: &str,
        role: Role,
        principal: &Principal,
    ) {
        if let Some(v) = self.last.as_mut() {
            if v.generation == generation
                && v.role == role
                && v.tunnel_id == tunnel_id
                && v.client_cert.as_deref() == client_cert
            {
                // Same connection, new credential: reuse the buffers.
                v.credential.fill(0);
                v.credential.clear();
                v.credential
                    .extend_from_slice(credential.unwrap_or("").as_bytes());
                v.principal = principal.clone();
                return;
            }
        }
        self.last = Some(Verdict {
            generation,
            credential: credential.unwrap_or("").as_bytes().to_vec(),
            client_cert: client_cert.map(<[u8]>::to_vec),
            tunnel_id: tunnel_id.to_string(),
            role,
            principal: principal.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(key_id: &str) -> Principal {
        Principal {
            key_id: key_id.into(),
            org_id: "org_a".into(),
            role: Role::Runtime,
            cert_name: None,
            keyless: false,
        }
    }

    #[test]
    fn recalls_only_the_same_inputs_in_the_same_generation() {
        let mut m = AuthMemo::default();
        let t = "tunnel_x";
        assert_eq!(m.recall(1, Some("mtk_a"), None, t, Role::Runtime), None);
        m.remember(
            1,
            Some("mtk_a"),
            None,
            t,
            Role::Runtime,
            &principal("key_a"),
        );
        assert_eq!(
            m.recall(1, Some("mtk_a"), None, t, Role::Runtime),
            Some(&principal("key_a"))
        );
        // Another key, none, a longer or shorter one: checked afresh.
        assert_eq!(m.recall(1, Some("mtk_b"), None, t, Role::Runtime), None);
        assert_eq!(m.recall(1, None, None, t, Role::Runtime), None);
        assert_eq!(m.recall(1, Some("mtk_a2"), None, t, Role::Runtime), None);
        assert_eq!(m.recall(1, Some("mtk_"), None, t, Role::Runtime), None);
        // A reload, another tunnel, role or certificate: afresh.
        assert_eq!(m.recall(2, Some("mtk_a"), None, t, Role::Runtime), None);
        assert_eq!(
            m.recall(1, Some("mtk_a"), None, "tunnel_y", Role::Runtime),
            None
        );
        assert_eq!(m.recall(1, Some("mtk_a"), None, t, Role::Connector), None);
        assert_eq!(
            m.recall(1, Some("mtk_a"), Some(b"der"), t, Role::Runtime),
            None
        );
        // A new verdict replaces the old one.
        m.remember(
            1,
            Some("mtk_b"),
            None,
            t,
            Role::Runtime,
            &principal("key_b"),
        );
        assert_eq!(m.recall(1, Some("mtk_a"), None, t, Role::Runtime), None);
        assert_eq!(
            m.recall(1, Some("mtk_b"), None, t, Role::Runtime),
            Some(&principal("key_b"))
        );
        m.remember(
            3,
            None,
            Some(b"der"),
            t,
            Role::Runtime,
            &principal("cert:x"),
        );
        assert_eq!(m.recall(3, None, None, t, Role::Runtime), None);
        assert_eq!(
            m.recall(3, None, Some(b"der"), t, Role::Runtime),
            Some(&principal("cert:x"))
        );
    }
}
