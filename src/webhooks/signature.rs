//! Standard Webhooks signatures: the `whsec_` secret format, `webhook-signature` signing and
//! verification.
//!
//! The signed content is `{msg_id}.{timestamp}.{body}` and the signature is
//! `v1,<base64 HMAC-SHA256>`; several signatures (one per live secret, during a rotation) are
//! space-separated, and a receiver accepts the message when any one of them verifies. Getting
//! this byte-for-byte right is the whole point: receivers verify with the `standardwebhooks`
//! reference libraries, so the tests pin the reference implementations' published vectors.
//!
//! This module never logs or formats key material: [`SigningKey`]'s `Debug` is redacted.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The prefix that marks a symmetric Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The signature scheme identifier for HMAC-SHA256.
const SCHEME_V1: &str = "v1";
/// Bytes of entropy in a secret Herald generates.
const GENERATED_KEY_BYTES: usize = 32;
/// The specification's bounds on a symmetric key: at least 24 bytes (192 bits), at most 64
/// (512 bits).
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

/// A fresh endpoint secret: `whsec_` + standard base64 of 32 random bytes.
///
/// `rand::rng()` is a cryptographically secure generator seeded from the OS, reseeded
/// periodically.
pub fn generate_secret() -> String {
    let mut key = [0u8; GENERATED_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// One endpoint secret, decoded and ready to sign with.
///
/// Holds the HMAC state already keyed, so each signature clones it instead of re-hashing the
/// key.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl SigningKey {
    /// Parses a `whsec_<base64>` secret. The prefix is required (a secret without it is more
    /// likely a paste of the wrong value than a raw key), the rest must be standard base64 of
    /// 24 to 64 bytes. Errors never echo the secret.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("webhook secret must start with `{SECRET_PREFIX}`"))?;
        let key = BASE64.decode(encoded).map_err(|e| {
            format!("webhook secret is not valid base64 after `{SECRET_PREFIX}`: {e}")
        })?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "webhook secret must decode to {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {}",
                key.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(&key)
            .map_err(|e| format!("webhook secret rejected by HMAC-SHA256: {e}"))?;
        Ok(SigningKey { mac })
    }

    /// The raw HMAC-SHA256 of `{msg_id}.{timestamp}.{body}`.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The `webhook-signature` header value: `v1,<base64>` for each key, space-separated, in the
/// order given (an empty string for no keys). `msg_id` must not be user controlled: the
/// specification relies on it containing no `.`.
pub fn sign(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            format!(
                "{SCHEME_V1},{}",
                BASE64.encode(key.mac(msg_id, timestamp, body))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a delivery the way a receiver does: `timestamp` (the `webhook-timestamp` header)
/// must be within `tolerance` of `now` (both unix seconds) in either direction, and at least one
/// of the space-separated `v1,` signatures in `signature_header` must match, compared in
/// constant time. Other schemes (`v1a,`) and malformed entries are skipped, not errors.
pub fn verify(
    key: &SigningKey,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(), String> {
    let skew = (i128::from(now) - i128::from(timestamp)).unsigned_abs();
    if skew > u128::from(tolerance.as_secs()) {
        return Err(format!(
            "webhook timestamp {timestamp} is {skew} s from now ({now}), outside the {} s tolerance",
            tolerance.as_secs()
        ));
    }
    let expected = key.mac(msg_id, timestamp, body);
    let mut matched = subtle::Choice::from(0);
    for entry in signature_header.split_ascii_whitespace() {
        let Some((scheme, encoded)) = entry.split_once(',') else {
            continue;
        };
        if scheme != SCHEME_V1 {
            continue;
        }
        let Ok(candidate) = BASE64.decode(encoded) else {
            continue;
        };
        // Slices of different lengths compare unequal; the length is not secret.
        matched |= expected.as_slice().ct_eq(&candidate);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err("no matching v1 signature in webhook-signature".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    /// The vector from the Standard Webhooks reference libraries' tests
    /// (`libraries/php/tests/WebhookTest.php`, `testSignFunctionWorks`).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key(secret: &str) -> SigningKey {
        SigningKey::parse(secret).expect("test secret parses")
    }

    fn verify_at_vector_time(key: &SigningKey, header: &str) -> Result<(), String> {
        verify(
            key,
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
            header,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        )
    }

    #[test]
    fn signing_reproduces_the_published_test_vector() {
        let signature = sign(
            &[key(VECTOR_SECRET)],
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
        );
        assert_eq!(signature, VECTOR_SIGNATURE);
    }

    #[test]
    fn signing_reproduces_the_rust_reference_library_vector() {
        // `libraries/rust/src/lib.rs`, `test_sign`.
        let signature = sign(
            &[key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn the_published_test_vector_verifies() {
        assert_eq!(
            verify_at_vector_time(&key(VECTOR_SECRET), VECTOR_SIGNATURE),
            Ok(())
        );
    }

    #[test]
    fn two_keys_sign_space_separated_in_order_and_each_verifies() {
        let old = key(VECTOR_SECRET);
        let new = key(&generate_secret());
        let header = sign(
            &[new.clone(), old.clone()],
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,"));
        assert_eq!(parts[1], VECTOR_SIGNATURE);
        assert_eq!(verify_at_vector_time(&old, &header), Ok(()));
        assert_eq!(verify_at_vector_time(&new, &header), Ok(()));
    }

    #[test]
    fn no_keys_sign_to_an_empty_header() {
        assert_eq!(sign(&[], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY), "");
    }

    #[test]
    fn a_key_that_did_not_sign_is_rejected() {
        let other = key(&generate_secret());
        assert!(verify_at_vector_time(&other, VECTOR_SIGNATURE).is_err());
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let result = verify(
            &key(VECTOR_SECRET),
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            br#"{"test": 2432232315}"#,
            VECTOR_SIGNATURE,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert!(result.is_err());
    }

    #[test]
    fn a_tampered_message_id_is_rejected() {
        let result = verify(
            &key(VECTOR_SECRET),
            "msg_p5jXN8AQM9LWM0D4loKWxJel",
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
            VECTOR_SIGNATURE,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert!(result.is_err());
    }

    #[test]
    fn a_tampered_timestamp_within_tolerance_is_rejected() {
        let result = verify(
            &key(VECTOR_SECRET),
            VECTOR_ID,
            VECTOR_TIMESTAMP + 1,
            VECTOR_BODY,
            VECTOR_SIGNATURE,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert!(result.is_err());
    }

    #[test]
    fn a_tampered_signature_is_rejected() {
        let tampered = VECTOR_SIGNATURE.replace("g0hM", "g0hN");
        assert!(verify_at_vector_time(&key(VECTOR_SECRET), &tampered).is_err());
    }

    #[test]
    fn timestamps_at_the_tolerance_edges_are_accepted_and_beyond_them_rejected() {
        let key = key(VECTOR_SECRET);
        let check = |now: i64| {
            verify(
                &key,
                VECTOR_ID,
                VECTOR_TIMESTAMP,
                VECTOR_BODY,
                VECTOR_SIGNATURE,
                now,
                TOLERANCE,
            )
        };
        assert_eq!(check(VECTOR_TIMESTAMP + 300), Ok(()));
        assert_eq!(check(VECTOR_TIMESTAMP - 300), Ok(()));
        assert!(check(VECTOR_TIMESTAMP + 301).is_err(), "too old");
        assert!(
            check(VECTOR_TIMESTAMP - 301).is_err(),
            "too far in the future"
        );
        assert!(check(i64::MAX).is_err(), "extreme skew does not overflow");
    }

    #[test]
    fn other_schemes_and_malformed_entries_are_skipped_not_fatal() {
        let header = format!(
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw== v2,{} garbage v1,not*base64 v1, {VECTOR_SIGNATURE}",
            &VECTOR_SIGNATURE[3..]
        );
        assert_eq!(verify_at_vector_time(&key(VECTOR_SECRET), &header), Ok(()));
    }

    #[test]
    fn a_matching_mac_under_another_scheme_is_rejected() {
        let header = VECTOR_SIGNATURE.replacen("v1,", "v1a,", 1);
        assert!(verify_at_vector_time(&key(VECTOR_SECRET), &header).is_err());
    }

    #[test]
    fn empty_and_truncated_signature_headers_are_rejected() {
        let key = key(VECTOR_SECRET);
        assert!(verify_at_vector_time(&key, "").is_err());
        assert!(verify_at_vector_time(&key, "v1,").is_err());
        assert!(verify_at_vector_time(&key, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJE").is_err());
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(
            BASE64.decode(&a[SECRET_PREFIX.len()..]).map(|k| k.len()),
            Ok(32)
        );
        assert_ne!(a, b);
        assert!(SigningKey::parse(&a).is_ok());
    }

    #[test]
    fn bad_secrets_are_rejected_without_echoing_them() {
        let too_short = format!("{SECRET_PREFIX}{}", BASE64.encode([7u8; 23]));
        let too_long = format!("{SECRET_PREFIX}{}", BASE64.encode([7u8; 65]));
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!!",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw-_",
            &too_short,
            &too_long,
        ] {
            let error = SigningKey::parse(bad).expect_err(bad);
            let encoded = bad.strip_prefix(SECRET_PREFIX).unwrap_or(bad);
            assert!(
                encoded.is_empty() || !error.contains(encoded),
                "error echoes the secret: {error}"
            );
        }
    }

    #[test]
    fn key_length_bounds_are_inclusive() {
        for len in [24usize, 64] {
            let secret = format!("{SECRET_PREFIX}{}", BASE64.encode(vec![1u8; len]));
            assert!(SigningKey::parse(&secret).is_ok(), "{len} bytes");
        }
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let debug = format!("{:?}", key(VECTOR_SECRET));
        assert_eq!(debug, "SigningKey(<redacted>)");
    }
}
