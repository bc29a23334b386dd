//! Customer tokens (`[auth.jwt]`): a JWT whose `sub` is the customerId, verified by the one key
//! configured for its algorithm.
//!
//! The algorithm is pinned by the key that verifies it: HS256 only with the shared secret, RS256
//! only with the public key, anything else (`alg: none`, HS256 signed with the public key as its
//! secret, RS384, ...) is refused, so a token's header never chooses how it is checked. Refusals
//! name the failed check, never a claim value, the token or a secret.
//!
//! The claim named by `partner_claim` binds the customer to one partner: the same `sub` at
//! another partner is another customer. A token without it is bound to no partner and reaches
//! only orders without one (it never means "every partner").

use super::{AuthError, Principal};
use crate::config::JwtConfig;
use anyhow::{Context, bail};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Three dot-separated base64url segments, the first two non-empty (the signature may be
/// empty, as in `alg: none` tokens, which are then refused by the verifier, not mistaken for
/// unknown keys).
pub(super) fn looks_like_jwt(credential: &str) -> bool {
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
pub(super) struct JwtVerifier {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(DecodingKey, Validation)>,
    /// `[auth.jwt] partner_claim`: the claim naming the customer's partner.
    partner_claim: String,
}

/// The claims Herald reads; `exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct CustomerClaims {
    // Options, so a missing claim is reported by the validation, by name.
    sub: Option<String>,
    exp: Option<f64>,
    /// The other claims, among them the configured partner claim (its name is config).
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
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
    pub(super) fn from_config(jwt: &JwtConfig) -> anyhow::Result<Option<JwtVerifier>> {
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
        Ok((hs256.is_some() || rs256.is_some()).then(|| JwtVerifier {
            hs256,
            rs256,
            partner_claim: jwt.partner_claim.clone(),
        }))
    }

    pub(super) fn verify(&self, token: &str) -> Result<Principal, AuthError> {
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
        // Absent (or null): bound to no partner. Anything but a non-empty string is refused,
        // never read as "no partner", which would widen what a malformed token reaches.
        let partner_id = match claims.other.get(&self.partner_claim) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(p)) if !p.is_empty() => Some(p.clone()),
            // The claim's name comes from our config, never from the token.
            Some(_) => {
                return Err(AuthError::Invalid(format!(
                    "malformed claim `{}`",
                    self.partner_claim
                )));
            }
        };
        Ok(Principal::Customer {
            customer_id,
            partner_id,
            expires_at: claims
                .exp
                .filter(|exp| exp.is_finite() && *exp >= 0.0)
                .map(|exp| exp as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRing;
    use crate::auth::fixtures::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    #[test]
    fn hs256_token_is_a_customer_with_its_expiry() {
        let exp = now() + 600;
        let mut c = claims();
        c["exp"] = json!(exp);
        assert_eq!(
            jwt_ring(true, false).authenticate(&hs256(&c)),
            Ok(Principal::Customer {
                customer_id: "cust-1".into(),
                partner_id: None,
                expires_at: Some(exp),
            })
        );
    }

    #[test]
    fn the_partner_claim_binds_the_customer_to_its_partner() {
        let ring = jwt_ring(true, true);
        let mut c = claims();
        c["partner_id"] = json!("acme");
        for token in [hs256(&c), rs(Algorithm::RS256, &c)] {
            assert!(matches!(
                ring.authenticate(&token),
                Ok(Principal::Customer { partner_id: Some(ref p), .. }) if p == "acme"
            ));
        }
        // Another claim name is configurable; then `partner_id` is just another claim.
        let mut jwt = jwt_config(true, false);
        jwt.partner_claim = "tid".into();
        let tid_ring = KeyRing::from_config(&auth_config(jwt)).unwrap();
        assert!(matches!(
            tid_ring.authenticate(&hs256(&c)),
            Ok(Principal::Customer {
                partner_id: None,
                ..
            })
        ));
        c["tid"] = json!("globex");
        assert!(matches!(
            tid_ring.authenticate(&hs256(&c)),
            Ok(Principal::Customer { partner_id: Some(ref p), .. }) if p == "globex"
        ));
        // A null claim is no claim; an empty or non-string one is refused, by name only.
        c["partner_id"] = Value::Null;
        assert!(matches!(
            ring.authenticate(&hs256(&c)),
            Ok(Principal::Customer {
                partner_id: None,
                ..
            })
        ));
        for bad in [json!(""), json!(7), json!(["acme"]), json!({"id": "acme"})] {
            c["partner_id"] = bad.clone();
            assert_eq!(
                ring.authenticate(&hs256(&c)),
                invalid("malformed claim `partner_id`"),
                "{bad}"
            );
        }
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

    /// A required claim is refused with `refusal` when it holds `bad`, and as missing when the
    /// token leaves it out.
    #[track_caller]
    fn assert_wrong_or_missing_claim_is_refused(claim: &str, bad: Value, refusal: &str) {
        let ring = jwt_ring(true, false);
        let mut c = claims();
        c[claim] = bad;
        assert_eq!(ring.authenticate(&hs256(&c)), invalid(refusal));
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            ring.authenticate(&hs256(&c)),
            invalid(&format!("missing claim `{claim}`"))
        );
    }

    #[test]
    fn wrong_or_missing_issuer_is_refused() {
        assert_wrong_or_missing_claim_is_refused(
            "iss",
            json!("https://evil.example"),
            "wrong issuer",
        );
    }

    #[test]
    fn wrong_or_missing_audience_is_refused() {
        assert_wrong_or_missing_claim_is_refused("aud", json!("someone-else"), "wrong audience");
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
        assert_wrong_or_missing_claim_is_refused("sub", json!(""), "empty claim `sub`");
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
}
