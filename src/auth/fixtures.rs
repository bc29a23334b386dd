//! Shared test fixtures of the auth rooms: a ring with one admin and one partner key, JWT
//! configurations with either or both keys, and token builders.

use crate::auth::{AuthError, KeyRing, Principal};
use crate::config::{AuthConfig, JwtConfig, PartnerKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::time::Duration;

pub(super) const SECRET: &str = "test-hs256-secret-0123456789abcdef";
pub(super) const RS_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_rs256_private.pem");
pub(super) const RS_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_rs256_public.pem");

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub(super) fn auth_config(jwt: JwtConfig) -> AuthConfig {
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

pub(super) fn ring() -> KeyRing {
    KeyRing::from_config(&auth_config(JwtConfig::default())).unwrap()
}

pub(super) fn jwt_config(hs: bool, rs: bool) -> JwtConfig {
    JwtConfig {
        hs256_secret: if hs { SECRET.into() } else { String::new() },
        rs256_public_key_pem: if rs { RS_PUBLIC.into() } else { String::new() },
        issuer: "https://id.example".into(),
        audience: "herald".into(),
        partner_claim: "partner_id".into(),
        leeway: Duration::from_secs(5),
    }
}

pub(super) fn jwt_ring(hs: bool, rs: bool) -> KeyRing {
    KeyRing::from_config(&auth_config(jwt_config(hs, rs))).unwrap()
}

pub(super) fn claims() -> Value {
    json!({"sub": "cust-1", "exp": now() + 600, "iss": "https://id.example", "aud": "herald"})
}

pub(super) fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub(super) fn rs(alg: Algorithm, claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub(super) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn invalid(reason: &str) -> Result<Principal, AuthError> {
    Err(AuthError::Invalid(reason.into()))
}
