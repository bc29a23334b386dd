//! Who is calling: API keys (admin, partner) resolved to a [`Principal`].
//!
//! Keys are compared in constant time: the presented key is hashed with SHA-256 and compared
//! with every configured key's hash using `subtle`, without stopping at the first match, so
//! neither the position of a match nor a shared prefix shows in the timing. Keys never appear
//! in logs or error bodies.

use crate::config::AuthConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything.
    Admin,
    /// Its own orders (those with its `partnerId`) and its own webhooks.
    Partner { partner_id: String },
}

impl Principal {
    /// The namespace of this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Partner { partner_id } => format!("partner:{partner_id}"),
        }
    }

    /// Whether this caller may see and change an order owned by `partner_id`.
    pub fn may_access_order(&self, partner_id: Option<&str>) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Partner { partner_id: own } => partner_id == Some(own.as_str()),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }
}

pub struct KeyRing {
    keys: Vec<([u8; 32], Principal)>,
}

impl KeyRing {
    pub fn from_config(auth: &AuthConfig) -> KeyRing {
        let admin = auth
            .admin_keys
            .iter()
            .map(|k| (digest(k), Principal::Admin));
        let partners = auth.partner_keys.iter().map(|p| {
            (
                digest(&p.key),
                Principal::Partner {
                    partner_id: p.partner_id.clone(),
                },
            )
        });
        KeyRing {
            keys: admin.chain(partners).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal a presented key belongs to, if any. Runs in time independent of which
    /// key (if any) matches.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let presented = digest(presented);
        let mut found: Option<&Principal> = None;
        for (hash, principal) in &self.keys {
            let equal: bool = hash.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh admin key for a server started without one: `hk_` + 32 random bytes, base64url.
pub fn generate_admin_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "hk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The credential a request carries: `Authorization: Bearer <token>` or `x-api-key: <key>`.
pub fn credential_from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Some((scheme, token)) = value.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_string());
        }
        return Some(value.to_string());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PartnerKey;

    fn ring() -> KeyRing {
        KeyRing::from_config(&AuthConfig {
            admin_keys: vec!["admin-key-0000000001".into()],
            partner_keys: vec![PartnerKey {
                key: "partner-key-acme-0001".into(),
                partner_id: "acme".into(),
            }],
            ..AuthConfig::default()
        })
    }

    #[test]
    fn keys_resolve_to_their_principal() {
        let ring = ring();
        assert_eq!(
            ring.authenticate("admin-key-0000000001"),
            Some(Principal::Admin)
        );
        assert_eq!(
            ring.authenticate("partner-key-acme-0001"),
            Some(Principal::Partner {
                partner_id: "acme".into()
            })
        );
        assert_eq!(ring.authenticate("admin-key-000000000"), None);
        assert_eq!(ring.authenticate(""), None);
    }

    #[test]
    fn partner_reaches_only_its_own_orders() {
        let p = Principal::Partner {
            partner_id: "acme".into(),
        };
        assert!(p.may_access_order(Some("acme")));
        assert!(!p.may_access_order(Some("globex")));
        assert!(!p.may_access_order(None));
        assert!(Principal::Admin.may_access_order(None));
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let a = generate_admin_key();
        assert!(a.len() > 40 && a.starts_with("hk_"));
        assert_ne!(a, generate_admin_key());
    }

    #[test]
    fn bearer_and_x_api_key_headers_are_read() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(credential_from_headers(&h).as_deref(), Some("abc"));
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(credential_from_headers(&h).as_deref(), Some("xyz"));
    }
}
