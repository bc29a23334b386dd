//! Credentials as they arrive: the input is an `Authorization` header value (or a
//! `connection_init` authorization / `x-api-key` field), through credential extraction and the
//! key ring (API keys, HS256 and RS256 customer tokens). Never panics; only the configured keys
//! authenticate as admin or partner; a customer is only ever a verified token with a subject;
//! a refusal never echoes the credential.

#![no_main]

use herald::auth::{KeyRing, Principal, credential_from_authorization};
use herald::fuzzing::{ADMIN_KEY, PARTNER_KEY, credential_from_payload, keyring};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static KEYS: LazyLock<KeyRing> = LazyLock::new(keyring);

fn check(credential: &str) {
    match KEYS.authenticate(credential) {
        Ok(Principal::Admin) => assert_eq!(credential, ADMIN_KEY),
        Ok(Principal::Partner { partner_id }) => {
            assert_eq!(credential, PARTNER_KEY);
            assert_eq!(partner_id, "p1");
        }
        Ok(Principal::Customer { customer_id, .. }) => {
            assert!(!customer_id.is_empty(), "a customer has an id");
            assert_eq!(
                credential.split('.').count(),
                3,
                "only a JWT names a customer"
            );
        }
        Err(e) => {
            if credential.len() > 64 {
                assert!(
                    !e.to_string().contains(credential),
                    "refusal echoes the credential"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return; // header values that are not text are never read as credentials
    };
    let credential = credential_from_authorization(value);
    assert_eq!(credential, credential.trim(), "credentials are trimmed");
    check(&credential);
    for name in ["authorization", "X-Api-Key"] {
        let payload = serde_json::Map::from_iter([(name.to_string(), value.into())]);
        if let Some(credential) = credential_from_payload(&payload) {
            check(&credential);
        }
    }
});
