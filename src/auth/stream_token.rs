//! Stream tokens: short-lived credentials for `EventSource`, which cannot set headers.
//! `POST /v1/stream-tokens` (authenticated by header) mints one for its caller; an SSE route
//! takes it as `?token=`.
//!
//! A token names the principal, when the credential it was minted from expires (customer
//! tokens) and when the token itself stops opening streams, signed with HMAC-SHA256 under
//! `push.stream_token_secret`:
//! `hst1.<role>.<base64url(partnerId)>.<base64url(customerId)>.<credential exp or empty>.<exp>.<base64url(mac)>`
//! (`role` is `a`, `p` or `c`; the MAC covers everything before its own dot). A stream opened
//! with one ends when the original credential expires, as any stream of that credential would.
//! Tags are compared in constant time (`Mac::verify_slice`). Tokens are secrets: nothing here
//! logs one, and [`StreamTokenKey`]'s `Debug` hides its key.

use super::{AuthError, Principal};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "hst1";

/// The key stream tokens are signed and checked with.
#[derive(Clone)]
pub struct StreamTokenKey(Vec<u8>);

impl std::fmt::Debug for StreamTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamTokenKey(..)")
    }
}

impl StreamTokenKey {
    pub fn new(secret: &[u8]) -> StreamTokenKey {
        StreamTokenKey(secret.to_vec())
    }

    /// A key drawn at random: tokens are accepted by this process only (the memory engine).
    pub fn random() -> StreamTokenKey {
        let bytes: [u8; 32] = rand::random();
        StreamTokenKey(bytes.to_vec())
    }

    fn tag(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(body.as_bytes());
        mac
    }

    /// A token for `principal` that opens streams until `expires_at` (Unix seconds), capped
    /// at the principal's own expiry.
    pub fn issue(&self, principal: &Principal, expires_at: u64) -> (String, u64) {
        let expires_at = principal
            .expires_at()
            .map_or(expires_at, |own| own.min(expires_at));
        let (role, partner, customer) = match principal {
            Principal::Admin => ("a", None, None),
            Principal::Partner { partner_id } => ("p", Some(partner_id.as_str()), None),
            Principal::Customer {
                customer_id,
                partner_id,
                ..
            } => ("c", partner_id.as_deref(), Some(customer_id.as_str())),
        };
        let encode = |v: Option<&str>| v.map(|v| URL_SAFE_NO_PAD.encode(v)).unwrap_or_default();
        let body = format!(
            "{PREFIX}.{role}.{}.{}.{}.{expires_at}",
            encode(partner),
            encode(customer),
            principal
                .expires_at()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        );
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&body).finalize().into_bytes());
        (format!("{body}.{tag}"), expires_at)
    }

    /// The principal a token was minted for, if it is signed with this key and still opens
    /// streams at `now` (Unix seconds). The error says nothing of the token's contents.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let invalid = || AuthError::Invalid("not a stream token signed by this server".into());
        let (body, tag) = token.rsplit_once('.').ok_or_else(invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        self.tag(body).verify_slice(&tag).map_err(|_| invalid())?;
        let parts: Vec<&str> = body.split('.').collect();
        let [prefix, role, partner, customer, credential_exp, exp] = parts[..] else {
            return Err(invalid());
        };
        if prefix != PREFIX {
            return Err(invalid());
        }
        let exp: u64 = exp.parse().map_err(|_| invalid())?;
        if now >= exp {
            return Err(AuthError::Expired);
        }
        let decode = |v: &str| -> Result<Option<String>, AuthError> {
            if v.is_empty() {
                return Ok(None);
            }
            let bytes = URL_SAFE_NO_PAD.decode(v).map_err(|_| invalid())?;
            String::from_utf8(bytes).map(Some).map_err(|_| invalid())
        };
        let credential_exp = match credential_exp {
            "" => None,
            e => Some(e.parse::<u64>().map_err(|_| invalid())?),
        };
        match role {
            "a" => Ok(Principal::Admin),
            "p" => Ok(Principal::Partner {
                partner_id: decode(partner)?.ok_or_else(invalid)?,
            }),
            "c" => Ok(Principal::Customer {
                customer_id: decode(customer)?.ok_or_else(invalid)?,
                partner_id: decode(partner)?,
                expires_at: credential_exp,
            }),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamTokenKey {
        StreamTokenKey::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn every_principal_comes_back_from_its_token() {
        let principals = [
            Principal::Admin,
            Principal::Partner {
                partner_id: "acme.eu".into(),
            },
            Principal::Customer {
                customer_id: "c-1".into(),
                partner_id: Some("acme".into()),
                expires_at: Some(2_000),
            },
            Principal::Customer {
                customer_id: "c-2".into(),
                partner_id: None,
                expires_at: None,
            },
        ];
        for principal in principals {
            let (token, exp) = key().issue(&principal, 1_060);
            assert_eq!(exp, 1_060);
            assert_eq!(key().verify(&token, 1_000), Ok(principal));
        }
    }

    #[test]
    fn a_token_expires_at_its_ttl_or_its_credentials_expiry_whichever_comes_first() {
        let customer = Principal::Customer {
            customer_id: "c-1".into(),
            partner_id: None,
            expires_at: Some(1_030),
        };
        let (token, exp) = key().issue(&customer, 1_060);
        assert_eq!(exp, 1_030);
        assert!(key().verify(&token, 1_029).is_ok());
        assert_eq!(key().verify(&token, 1_030), Err(AuthError::Expired));
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let (token, _) = key().issue(
            &Principal::Partner {
                partner_id: "acme".into(),
            },
            1_060,
        );
        assert!(StreamTokenKey::random().verify(&token, 1_000).is_err());
        // Another partner under the same tag; a later expiry under the same tag.
        let globex = token.replace(
            &URL_SAFE_NO_PAD.encode("acme"),
            &URL_SAFE_NO_PAD.encode("globex"),
        );
        assert!(matches!(
            key().verify(&globex, 1_000),
            Err(AuthError::Invalid(_))
        ));
        let later = token.replace(".1060.", ".9999.");
        assert!(matches!(
            key().verify(&later, 1_000),
            Err(AuthError::Invalid(_))
        ));
        let admin = token.replacen(".p.", ".a.", 1);
        assert!(matches!(
            key().verify(&admin, 1_000),
            Err(AuthError::Invalid(_))
        ));
        for bad in [
            "",
            "hst1",
            "a.b",
            &token[..token.len() - 3],
            &format!("x{token}"),
        ] {
            assert!(key().verify(bad, 1_000).is_err(), "{bad}");
        }
    }
}
