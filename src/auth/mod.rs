//! Who is calling: API keys (admin, partner) and customer JWTs resolved to a [`Principal`].
//!
//! API keys are checked first and in constant time: the presented credential is hashed with
//! SHA-256 and compared with every configured key's hash using `subtle`, without stopping at
//! the first match, so neither the position of a match nor a shared prefix shows in the timing.
//! Only a credential that is no known key and has the JWT shape is then verified as a customer
//! token (`[auth.jwt]`). The algorithm is pinned by the key that verifies it: HS256 only with
//! the shared secret, RS256 only with the public key, anything else (`alg: none`, HS256 signed
//! with the public key as its secret, RS384, ...) is refused. Credentials and secrets never
//! appear in logs, error bodies or `Debug` output; [`AuthError`] messages are safe to send.

mod jwt;
mod keys;
mod stream_token;

#[cfg(test)]
mod fixtures;

pub use jwt::{MIN_HS256_SECRET_BYTES, rs256_public_key};
pub use keys::{KeyRing, generate_admin_key};
pub use stream_token::StreamTokenKey;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything.
    Admin,
    /// Its own orders (those with its `partnerId`) and its own webhooks.
    Partner { partner_id: String },
    /// A customer token (JWT, `sub` = customerId): reads its own orders only, and only those
    /// of the partner it is bound to (`[auth.jwt] partner_claim`); a token without the claim
    /// reaches only orders without a partner.
    Customer {
        customer_id: String,
        /// The partner this customer belongs to; `None`: orders without a partner only.
        partner_id: Option<String>,
        /// The token's `exp`, in Unix seconds: long-lived connections end their access here.
        expires_at: Option<u64>,
    },
}

impl Principal {
    /// The namespace of this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Partner { partner_id } => format!("partner:{partner_id}"),
            Principal::Customer { customer_id, .. } => format!("customer:{customer_id}"),
        }
    }

    /// Whether this caller may see an order owned by `partner_id` and placed by
    /// `customer_id`: admin all, a partner those with its partnerId, a customer its own at
    /// its own partner (the same customerId at another partner is another customer).
    pub fn may_access_order(&self, partner_id: Option<&str>, customer_id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Partner { partner_id: own } => partner_id == Some(own.as_str()),
            Principal::Customer {
                customer_id: own,
                partner_id: own_partner,
                ..
            } => customer_id == own && partner_id == own_partner.as_deref(),
        }
    }

    /// When this caller's credential stops being valid (customer tokens only; keys do not
    /// expire).
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::Customer { expires_at, .. } => *expires_at,
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }
}

/// Why a credential was refused. The messages are safe to send to the caller: they never
/// contain the credential, a claim value or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a configured key, and not a token this server verifies.
    #[error("unknown credential")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Which credential a request came with, for per-credential limits; never the credential
/// itself, so it may be kept and logged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialId {
    /// The n-th configured API key (admin keys first, then partner keys, in config order).
    Key(usize),
    /// A customer token's subject (`sub`, the customerId) within its partner (the token's
    /// partner claim): customer `c-1` of two partners is two credentials.
    Subject {
        partner_id: Option<String>,
        customer_id: String,
    },
}

/// A key's own rate limit (`[[auth.partner_keys]] rate_limit_*`); unset parts take `[http]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRateLimit {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
}

/// An authenticated caller: who it is, which credential it used, that key's own limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub credential: CredentialId,
    pub rate_limit: KeyRateLimit,
}

/// The credential in an `Authorization` value: the token after `Bearer ` (any case), or the
/// whole value when it names no scheme.
pub fn credential_from_authorization(value: &str) -> String {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_string(),
        _ => value.to_string(),
    }
}

/// The credential a request carries: `Authorization: Bearer <token>` or `x-api-key: <key>`.
pub fn credential_from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(credential_from_authorization(value));
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_reaches_only_its_own_orders() {
        let p = Principal::Partner {
            partner_id: "acme".into(),
        };
        assert!(p.may_access_order(Some("acme"), "c"));
        assert!(!p.may_access_order(Some("globex"), "c"));
        assert!(!p.may_access_order(None, "c"));
        assert!(Principal::Admin.may_access_order(None, "c"));
        let c = Principal::Customer {
            customer_id: "cust-1".into(),
            partner_id: None,
            expires_at: Some(1),
        };
        // A token bound to no partner: partnerless orders only.
        assert!(c.may_access_order(None, "cust-1"));
        assert!(!c.may_access_order(Some("acme"), "cust-1"));
        assert!(!c.may_access_order(None, "cust-2"));
        // Bound to acme: acme's orders of this customer only.
        let bound = Principal::Customer {
            customer_id: "cust-1".into(),
            partner_id: Some("acme".into()),
            expires_at: None,
        };
        assert!(bound.may_access_order(Some("acme"), "cust-1"));
        assert!(!bound.may_access_order(Some("globex"), "cust-1"));
        assert!(!bound.may_access_order(None, "cust-1"));
        assert!(!bound.may_access_order(Some("acme"), "cust-2"));
        assert!(!c.is_admin());
        assert_eq!(c.expires_at(), Some(1));
        assert_eq!(p.expires_at(), None);
        assert_eq!(c.idempotency_scope(), "customer:cust-1");
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
