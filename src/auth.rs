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

use crate::config::{AuthConfig, JwtConfig};
use anyhow::{Context, bail};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything.
    Admin,
    /// Its own orders (those with its `partnerId`) and its own webhooks.
    Partner { partner_id: String },
    /// A customer token (JWT, `sub` = customerId): reads its own orders only.
    Customer {
        customer_id: String,
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
    /// `customer_id`: admin all, a partner those with its partnerId, a customer its own.
    pub fn may_access_order(&self, partner_id: Option<&str>, customer_id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Partner { partner_id: own } => partner_id == Some(own.as_str()),
            Principal::Customer {
                customer_id: own, ..
            } => customer_id == own,
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
    /// A customer token's subject (`sub`, the customerId).
    Subject(String),
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

struct ConfiguredKey {
    hash: [u8; 32],
    principal: Principal,
    rate_limit: KeyRateLimit,
}

/// The configured API keys and customer-token verifiers, built once at start-up.
pub struct KeyRing {
    keys: Vec<ConfiguredKey>,
    jwt: Option<JwtVerifier>,
}

impl KeyRing {
    /// Builds the ring from `[auth]`. A JWT key that cannot be used (an unparsable PEM, a
    /// short secret) is a start-up error, never a ring that refuses every token.
    pub fn from_config(auth: &AuthConfig) -> anyhow::Result<KeyRing> {
        let admin = auth.admin_keys.iter().map(|k| ConfiguredKey {
            hash: digest(k),
            principal: Principal::Admin,
            rate_limit: KeyRateLimit::default(),
        });
        let partners = auth.partner_keys.iter().map(|p| ConfiguredKey {
            hash: digest(&p.key),
            principal: Principal::Partner {
                partner_id: p.partner_id.clone(),
            },
            rate_limit: KeyRateLimit {
                per_second: p.rate_limit_per_second,
                burst: p.rate_limit_burst,
            },
        });
        Ok(KeyRing {
            keys: admin.chain(partners).collect(),
            jwt: JwtVerifier::from_config(&auth.jwt)?,
        })
    }

    /// Whether no API key is configured (customer tokens alone cannot run a server).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal a presented credential belongs to: a configured API key (looked up in
    /// time independent of which key, if any, matches), else a valid customer JWT.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        self.identify(credential).map(|caller| caller.principal)
    }

    /// [`KeyRing::authenticate`], also naming the credential (for per-credential limits).
    pub fn identify(&self, credential: &str) -> Result<Caller, AuthError> {
        if let Some(index) = self.lookup_key(credential) {
            let key = &self.keys[index];
            return Ok(Caller {
                principal: key.principal.clone(),
                credential: CredentialId::Key(index),
                rate_limit: key.rate_limit,
            });
        }
        match &self.jwt {
            Some(verifier) if looks_like_jwt(credential) => {
                let principal = verifier.verify(credential)?;
                let subject = match &principal {
                    Principal::Customer { customer_id, .. } => customer_id.clone(),
                    _ => String::new(),
                };
                Ok(Caller {
                    principal,
                    credential: CredentialId::Subject(subject),
                    rate_limit: KeyRateLimit::default(),
                })
            }
            _ => Err(AuthError::Unknown),
        }
    }

    /// The constant-time key lookup: every key's hash is compared, whatever matched before;
    /// the index of the first match.
    fn lookup_key(&self, presented: &str) -> Option<usize> {
        let presented = digest(presented);
        let mut found: Option<usize> = None;
        for (index, key) in self.keys.iter().enumerate() {
            let equal: bool = key.hash.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(index);
            }
        }
        found
    }
}

/// Three dot-separated base64url segments, the first two non-empty (the signature may be
/// empty, as in `alg: none` tokens, which are then refused by the verifier, not mistaken for
/// unknown keys).
fn looks_like_jwt(credential: &str) -> bool {
    let segments: Vec<&str> = credential.split('.').collect();
    segments.len() == 3
        && !segments[0].is_empty()
        && !segments[1].is_empty()
        && credential
            .bytes()
            .all(|b| b == b'.' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

/// Verifies customer tokens with the keys of `[auth.jwt]`; each key accepts exactly one
/// algorithm, so the token's header cannot choose how it is checked.
struct JwtVerifier {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(DecodingKey, Validation)>,
}

/// The claims Herald reads; `exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct CustomerClaims {
    // Options, so a missing claim is reported by the validation, by name.
    sub: Option<String>,
    exp: Option<f64>,
}

/// The shortest HS256 secret accepted: as long as the hash output (RFC 7518, 3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Parses `[auth.jwt] rs256_public_key_pem`: a PEM `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY`
/// (PKCS#1). A private key is refused, so it is not left in a config file by mistake.
pub fn rs256_public_key(pem: &str) -> anyhow::Result<DecodingKey> {
    let trimmed = pem.trim_start();
    if !(trimmed.starts_with("-----BEGIN PUBLIC KEY-----")
        || trimmed.starts_with("-----BEGIN RSA PUBLIC KEY-----"))
    {
        bail!(
            "auth.jwt.rs256_public_key_pem: expected a PEM `PUBLIC KEY` or `RSA PUBLIC KEY` block"
        );
    }
    DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{:?}", e.kind()))
        .context("auth.jwt.rs256_public_key_pem: not a usable RSA public key")
}

impl JwtVerifier {
    fn from_config(jwt: &JwtConfig) -> anyhow::Result<Option<JwtVerifier>> {
        let validation = |algorithm: Algorithm| {
            let mut v = Validation::new(algorithm);
            v.leeway = jwt.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if !jwt.issuer.is_empty() {
                v.set_issuer(&[&jwt.issuer]);
                required.push("iss");
            }
            if jwt.audience.is_empty() {
                // Without a configured audience, a token's `aud` is not ours to judge.
                v.validate_aud = false;
            } else {
                v.set_audience(&[&jwt.audience]);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hs256 = if jwt.hs256_secret.is_empty() {
            None
        } else {
            if jwt.hs256_secret.len() < MIN_HS256_SECRET_BYTES {
                bail!("auth.jwt.hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes");
            }
            Some((
                DecodingKey::from_secret(jwt.hs256_secret.as_bytes()),
                validation(Algorithm::HS256),
            ))
        };
        let rs256 = if jwt.rs256_public_key_pem.is_empty() {
            None
        } else {
            Some((
                rs256_public_key(&jwt.rs256_public_key_pem)?,
                validation(Algorithm::RS256),
            ))
        };
        Ok((hs256.is_some() || rs256.is_some()).then_some(JwtVerifier { hs256, rs256 }))
    }

    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |reason: &str| AuthError::Invalid(reason.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed header or algorithm not accepted"))?;
        let (key, validation) = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| invalid("algorithm not accepted"))?;
        let data = jsonwebtoken::decode::<CustomerClaims>(token, key, validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => invalid("not valid yet (nbf)"),
                ErrorKind::InvalidSignature => invalid("bad signature"),
                ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                ErrorKind::InvalidAudience => invalid("wrong audience"),
                ErrorKind::InvalidAlgorithm => invalid("algorithm not accepted"),
                // The claim names come from our own required list, never from the token.
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("missing claim `{claim}`"))
                }
                ErrorKind::InvalidClaimFormat(claim) => {
                    AuthError::Invalid(format!("malformed claim `{claim}`"))
                }
                _ => invalid("malformed token"),
            }
        })?;
        let claims = data.claims;
        let customer_id = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| invalid("empty claim `sub`"))?;
        Ok(Principal::Customer {
            customer_id,
            expires_at: claims
                .exp
                .filter(|exp| exp.is_finite() && *exp >= 0.0)
                .map(|exp| exp as u64),
        })
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
    use crate::config::PartnerKey;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};
    use std::time::Duration;

    const SECRET: &str = "test-hs256-secret-0123456789abcdef";
    const RS_PRIVATE: &str = include_str!("../tests/fixtures/jwt_rs256_private.pem");
    const RS_PUBLIC: &str = include_str!("../tests/fixtures/jwt_rs256_public.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn auth_config(jwt: JwtConfig) -> AuthConfig {
        AuthConfig {
            admin_keys: vec!["admin-key-0000000001".into()],
            partner_keys: vec![PartnerKey {
                key: "partner-key-acme-0001".into(),
                partner_id: "acme".into(),
                rate_limit_per_second: Some(7),
                rate_limit_burst: None,
            }],
            jwt,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::from_config(&auth_config(JwtConfig::default())).unwrap()
    }

    fn jwt_config(hs: bool, rs: bool) -> JwtConfig {
        JwtConfig {
            hs256_secret: if hs { SECRET.into() } else { String::new() },
            rs256_public_key_pem: if rs { RS_PUBLIC.into() } else { String::new() },
            issuer: "https://id.example".into(),
            audience: "herald".into(),
            leeway: Duration::from_secs(5),
        }
    }

    fn jwt_ring(hs: bool, rs: bool) -> KeyRing {
        KeyRing::from_config(&auth_config(jwt_config(hs, rs))).unwrap()
    }

    fn claims() -> Value {
        json!({"sub": "cust-1", "exp": now() + 600, "iss": "https://id.example", "aud": "herald"})
    }

    fn hs256(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn rs(alg: Algorithm, claims: &Value) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn invalid(reason: &str) -> Result<Principal, AuthError> {
        Err(AuthError::Invalid(reason.into()))
    }

    #[test]
    fn keys_resolve_to_their_principal() {
        let ring = ring();
        assert_eq!(
            ring.authenticate("admin-key-0000000001"),
            Ok(Principal::Admin)
        );
        assert_eq!(
            ring.authenticate("partner-key-acme-0001"),
            Ok(Principal::Partner {
                partner_id: "acme".into()
            })
        );
        assert_eq!(
            ring.authenticate("admin-key-000000000"),
            Err(AuthError::Unknown)
        );
        assert_eq!(ring.authenticate(""), Err(AuthError::Unknown));
    }

    #[test]
    fn api_keys_take_the_constant_time_path_before_any_jwt_check() {
        // A key that happens to have the JWT shape is still a key: the lookup runs first.
        let jwt_shaped_key = "aaaaaaaa.bbbbbbbb.cccccccc";
        let mut config = auth_config(jwt_config(true, false));
        config.admin_keys.push(jwt_shaped_key.into());
        let ring = KeyRing::from_config(&config).unwrap();
        assert_eq!(ring.authenticate(jwt_shaped_key), Ok(Principal::Admin));
        // The lookup compares every key (first and last alike), whatever the JWT config.
        assert_eq!(ring.lookup_key("admin-key-0000000001"), Some(0));
        assert_eq!(ring.lookup_key("partner-key-acme-0001"), Some(2));
        assert_eq!(ring.lookup_key(jwt_shaped_key), Some(1));
        assert_eq!(ring.lookup_key(&hs256(&claims())), None);
        // A non-key without the JWT shape never reaches the verifier.
        assert_eq!(ring.authenticate("not-a-key"), Err(AuthError::Unknown));
    }

    #[test]
    fn callers_are_named_by_key_position_or_token_subject_never_by_the_secret() {
        let ring = jwt_ring(true, false);
        let partner = ring.identify("partner-key-acme-0001").unwrap();
        assert_eq!(partner.credential, CredentialId::Key(1));
        assert_eq!(
            partner.rate_limit,
            KeyRateLimit {
                per_second: Some(7),
                burst: None
            }
        );
        let admin = ring.identify("admin-key-0000000001").unwrap();
        assert_eq!(admin.credential, CredentialId::Key(0));
        assert_eq!(admin.rate_limit, KeyRateLimit::default());
        let customer = ring.identify(&hs256(&claims())).unwrap();
        assert_eq!(customer.credential, CredentialId::Subject("cust-1".into()));
        assert_eq!(ring.identify("nope"), Err(AuthError::Unknown));
    }

    #[test]
    fn jwt_shaped_credentials_are_unknown_when_jwts_are_not_configured() {
        assert_eq!(
            ring().authenticate(&hs256(&claims())),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn hs256_token_is_a_customer_with_its_expiry() {
        let exp = now() + 600;
        let mut c = claims();
        c["exp"] = json!(exp);
        assert_eq!(
            jwt_ring(true, false).authenticate(&hs256(&c)),
            Ok(Principal::Customer {
                customer_id: "cust-1".into(),
                expires_at: Some(exp),
            })
        );
    }

    #[test]
    fn rs256_token_is_a_customer() {
        let p = jwt_ring(false, true)
            .authenticate(&rs(Algorithm::RS256, &claims()))
            .unwrap();
        assert!(
            matches!(p, Principal::Customer { ref customer_id, .. } if customer_id == "cust-1")
        );
        // Both keys configured: each algorithm goes to its own key.
        let both = jwt_ring(true, true);
        assert!(both.authenticate(&rs(Algorithm::RS256, &claims())).is_ok());
        assert!(both.authenticate(&hs256(&claims())).is_ok());
    }

    #[test]
    fn expired_token_is_refused_as_expired() {
        let mut c = claims();
        c["exp"] = json!(now() - 60);
        assert_eq!(
            jwt_ring(true, false).authenticate(&hs256(&c)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn leeway_tolerates_a_just_expired_token() {
        let mut c = claims();
        c["exp"] = json!(now() - 2);
        assert!(jwt_ring(true, false).authenticate(&hs256(&c)).is_ok());
    }

    #[test]
    fn missing_exp_is_refused() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            jwt_ring(true, false).authenticate(&hs256(&c)),
            invalid("missing claim `exp`")
        );
    }

    #[test]
    fn token_not_valid_before_a_future_nbf_is_refused() {
        let mut c = claims();
        c["nbf"] = json!(now() + 300);
        assert_eq!(
            jwt_ring(true, false).authenticate(&hs256(&c)),
            invalid("not valid yet (nbf)")
        );
        c["nbf"] = json!(now() - 10);
        assert!(jwt_ring(true, false).authenticate(&hs256(&c)).is_ok());
    }

    #[test]
    fn wrong_or_missing_issuer_is_refused() {
        let ring = jwt_ring(true, false);
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(ring.authenticate(&hs256(&c)), invalid("wrong issuer"));
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            ring.authenticate(&hs256(&c)),
            invalid("missing claim `iss`")
        );
    }

    #[test]
    fn wrong_or_missing_audience_is_refused() {
        let ring = jwt_ring(true, false);
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert_eq!(ring.authenticate(&hs256(&c)), invalid("wrong audience"));
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            ring.authenticate(&hs256(&c)),
            invalid("missing claim `aud`")
        );
    }

    #[test]
    fn issuer_and_audience_are_not_required_when_not_configured() {
        let mut jwt = jwt_config(true, false);
        jwt.issuer.clear();
        jwt.audience.clear();
        let ring = KeyRing::from_config(&auth_config(jwt)).unwrap();
        let c = json!({"sub": "cust-1", "exp": now() + 600, "aud": "anything"});
        assert!(ring.authenticate(&hs256(&c)).is_ok());
    }

    #[test]
    fn missing_or_empty_sub_is_refused() {
        let ring = jwt_ring(true, false);
        let mut c = claims();
        c["sub"] = json!("");
        assert_eq!(ring.authenticate(&hs256(&c)), invalid("empty claim `sub`"));
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            ring.authenticate(&hs256(&c)),
            invalid("missing claim `sub`")
        );
    }

    #[test]
    fn bad_signature_is_refused() {
        let ring = jwt_ring(true, true);
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another-secret-of-sufficient-length!!"),
        )
        .unwrap();
        assert_eq!(ring.authenticate(&other), invalid("bad signature"));
        // A valid RS256 token with its claims swapped keeps a signature that no longer fits.
        let token = rs(Algorithm::RS256, &claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged["sub"] = json!("cust-2");
        let forged = b64(forged.to_string().as_bytes());
        parts[1] = &forged;
        assert_eq!(
            ring.authenticate(&parts.join(".")),
            invalid("bad signature")
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(claims().to_string().as_bytes());
        let ring = jwt_ring(true, true);
        for token in [format!("{header}.{body}."), format!("{header}.{body}.c2ln")] {
            assert!(
                matches!(ring.authenticate(&token), Err(AuthError::Invalid(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        // The classic key confusion: the public PEM used as an HMAC secret.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            jwt_ring(false, true).authenticate(&confused),
            invalid("algorithm not accepted")
        );
        assert_eq!(
            jwt_ring(true, true).authenticate(&confused),
            invalid("bad signature")
        );
    }

    #[test]
    fn rs256_token_is_refused_when_only_hs256_is_configured() {
        assert_eq!(
            jwt_ring(true, false).authenticate(&rs(Algorithm::RS256, &claims())),
            invalid("algorithm not accepted")
        );
    }

    #[test]
    fn other_rsa_algorithms_are_refused() {
        assert_eq!(
            jwt_ring(true, true).authenticate(&rs(Algorithm::RS384, &claims())),
            invalid("algorithm not accepted")
        );
    }

    #[test]
    fn bad_jwt_keys_are_startup_errors() {
        let mut jwt = jwt_config(false, false);
        jwt.rs256_public_key_pem =
            "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n".into();
        assert!(KeyRing::from_config(&auth_config(jwt.clone())).is_err());
        jwt.rs256_public_key_pem = RS_PRIVATE.into();
        assert!(KeyRing::from_config(&auth_config(jwt)).is_err());
        let mut jwt = jwt_config(false, false);
        jwt.hs256_secret = "too-short".into();
        assert!(KeyRing::from_config(&auth_config(jwt)).is_err());
    }

    #[test]
    fn secrets_and_tokens_never_show_in_debug_or_errors() {
        let debug = format!("{:?}", jwt_config(true, true));
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("MII"), "{debug}");
        let ring = jwt_ring(true, true);
        let mut expired = claims();
        expired["exp"] = json!(now() - 600);
        let mut wrong_iss = claims();
        wrong_iss["iss"] = json!("https://evil.example");
        for token in [
            hs256(&expired),
            hs256(&wrong_iss),
            format!("{}x", hs256(&claims())),
        ] {
            let err = ring.authenticate(&token).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(
                    !shown.contains(&token) && !shown.contains(SECRET),
                    "{shown}"
                );
                assert!(
                    !shown.contains("evil") && !shown.contains("cust-1"),
                    "{shown}"
                );
            }
        }
    }

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
            expires_at: Some(1),
        };
        assert!(c.may_access_order(None, "cust-1"));
        assert!(c.may_access_order(Some("acme"), "cust-1"));
        assert!(!c.may_access_order(Some("acme"), "cust-2"));
        assert!(!c.is_admin());
        assert_eq!(c.expires_at(), Some(1));
        assert_eq!(p.expires_at(), None);
        assert_eq!(c.idempotency_scope(), "customer:cust-1");
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
