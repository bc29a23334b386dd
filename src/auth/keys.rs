//! The API key ring: admin and partner keys from `[auth]`, looked up in constant time, and the
//! routing of every other JWT-shaped credential to the customer-token verifier.
//!
//! A presented credential is hashed with SHA-256 and compared with every configured key's hash
//! using `subtle`, never stopping at the first match, so neither which key matched nor a shared
//! prefix shows in the timing (`tests/security.rs` reads `KeyRing::lookup_key`'s body to hold
//! it to that). Only the digests are kept; the ring never stores or logs a key.

use super::jwt::{JwtVerifier, looks_like_jwt};
use super::{AuthError, Caller, CredentialId, KeyRateLimit, Principal};
use crate::config::AuthConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
                let credential = match &principal {
                    Principal::Customer {
                        customer_id,
                        partner_id,
                        ..
                    } => CredentialId::Subject {
                        partner_id: partner_id.clone(),
                        customer_id: customer_id.clone(),
                    },
                    _ => CredentialId::Subject {
                        partner_id: None,
                        customer_id: String::new(),
                    },
                };
                Ok(Caller {
                    principal,
                    credential,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::fixtures::*;

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
        assert_eq!(
            customer.credential,
            CredentialId::Subject {
                partner_id: None,
                customer_id: "cust-1".into()
            }
        );
        assert_eq!(ring.identify("nope"), Err(AuthError::Unknown));
        // The same subject under two partners (the partner claim) is two credentials: they
        // share no rate-limit bucket and no long-poll places.
        let of = |partner: &str| {
            let mut claims = claims();
            claims["partner_id"] = partner.into();
            ring.identify(&hs256(&claims)).unwrap().credential
        };
        assert_eq!(
            of("acme"),
            CredentialId::Subject {
                partner_id: Some("acme".into()),
                customer_id: "cust-1".into()
            }
        );
        assert_ne!(of("acme"), of("globex"));
    }

    #[test]
    fn jwt_shaped_credentials_are_unknown_when_jwts_are_not_configured() {
        assert_eq!(
            ring().authenticate(&hs256(&claims())),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let a = generate_admin_key();
        assert!(a.len() > 40 && a.starts_with("hk_"));
        assert_ne!(a, generate_admin_key());
    }
}
