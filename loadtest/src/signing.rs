//! Standard Webhooks signatures, as a receiver checks them: the `whsec_` secret, the
//! `webhook-signature` header (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, several
//! space-separated during a secret rotation) and the timestamp tolerance.
//!
//! The load tool verifies with its own implementation, written from the specification and
//! pinned to its published test vector, and never with Herald's code: a bug in Herald's signer
//! must show up here as invalid signatures, not be reproduced. The reference client signs with
//! [`sign`] so the sink does exactly the same work for it as for Herald.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const PREFIX: &str = "whsec_";
const SCHEME: &str = "v1";

/// The specification's receiver default: a `webhook-timestamp` further than this from now (in
/// either direction) is refused, whatever the signature.
pub const TOLERANCE_SECS: u64 = 5 * 60;

/// An endpoint secret, decoded and keyed once (each message clones the keyed state).
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
}

/// Why a delivery did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// `webhook-timestamp` is outside [`TOLERANCE_SECS`] of the receiver's clock.
    Timestamp,
    /// No `v1,` entry of `webhook-signature` matches.
    Signature,
}

impl Key {
    /// `whsec_` + standard base64. Errors never echo the secret.
    pub fn parse(secret: &str) -> Result<Key, String> {
        let encoded = secret
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("the webhook secret does not start with `{PREFIX}`"))?;
        let raw = BASE64
            .decode(encoded)
            .map_err(|e| format!("the webhook secret is not base64 after `{PREFIX}`: {e}"))?;
        let mac = Hmac::<Sha256>::new_from_slice(&raw)
            .map_err(|e| format!("the webhook secret is not an HMAC key: {e}"))?;
        Ok(Key { mac })
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` value for one key: `v1,<base64>`.
pub fn sign(key: &Key, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = key.mac(msg_id, &timestamp.to_string(), body);
    format!("{SCHEME},{}", BASE64.encode(mac))
}

/// Checks one delivery: `timestamp` is the `webhook-timestamp` header exactly as received (it
/// is signed as text), `now_secs` the receiver's clock. Any one matching `v1,` entry of the
/// space-separated `signature_header` is enough; other schemes and malformed entries are
/// skipped. The comparison is constant-time.
pub fn verify(
    key: &Key,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
    now_secs: u64,
) -> Result<(), Invalid> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| Invalid::Timestamp)?;
    let skew = (i128::from(ts) - i128::from(now_secs)).unsigned_abs();
    if skew > u128::from(TOLERANCE_SECS) {
        return Err(Invalid::Timestamp);
    }
    let expected = key.mac(msg_id, timestamp, body);
    let mut matched = subtle::Choice::from(0);
    for entry in signature_header.split_ascii_whitespace() {
        let Some((scheme, encoded)) = entry.split_once(',') else {
            continue;
        };
        if scheme != SCHEME {
            continue;
        }
        if let Ok(candidate) = BASE64.decode(encoded) {
            matched |= expected.as_slice().ct_eq(&candidate);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Invalid::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const NOW: u64 = 1_614_265_330;

    fn key() -> Key {
        Key::parse(SECRET).expect("the vector's secret parses")
    }

    #[test]
    fn the_specification_vector_verifies() {
        assert_eq!(
            verify(&key(), MSG_ID, TIMESTAMP, BODY, SIGNATURE, NOW),
            Ok(())
        );
    }

    #[test]
    fn signing_reproduces_the_specification_vector() {
        assert_eq!(sign(&key(), MSG_ID, 1_614_265_330, BODY), SIGNATURE);
    }

    #[test]
    fn any_matching_entry_of_a_rotation_header_verifies() {
        let other = Key::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("parses");
        let header = format!("{} {SIGNATURE}", sign(&other, MSG_ID, 1_614_265_330, BODY));
        assert_eq!(
            verify(&key(), MSG_ID, TIMESTAMP, BODY, &header, NOW),
            Ok(())
        );
        assert_eq!(
            verify(&other, MSG_ID, TIMESTAMP, BODY, &header, NOW),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_timestamp_does_not_verify() {
        let k = key();
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&k, MSG_ID, TIMESTAMP, body, SIGNATURE, NOW),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(
                &k,
                "msg_p5jXN8AQM9LWM0D4loKWxJel",
                TIMESTAMP,
                BODY,
                SIGNATURE,
                NOW
            ),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(&k, MSG_ID, "1614265331", BODY, SIGNATURE, NOW),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn another_secret_does_not_verify() {
        let other = Key::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("parses");
        assert_eq!(
            verify(&other, MSG_ID, TIMESTAMP, BODY, SIGNATURE, NOW),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn other_schemes_and_garbage_entries_are_skipped() {
        let k = key();
        let same_mac_other_scheme = SIGNATURE.replacen("v1,", "v1a,", 1);
        assert_eq!(
            verify(&k, MSG_ID, TIMESTAMP, BODY, &same_mac_other_scheme, NOW),
            Err(Invalid::Signature)
        );
        let header = format!("garbage v1,**** v1, {same_mac_other_scheme} {SIGNATURE}");
        assert_eq!(verify(&k, MSG_ID, TIMESTAMP, BODY, &header, NOW), Ok(()));
        assert_eq!(
            verify(&k, MSG_ID, TIMESTAMP, BODY, "", NOW),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn timestamps_beyond_the_tolerance_are_refused_either_way() {
        let k = key();
        let at = |now| verify(&k, MSG_ID, TIMESTAMP, BODY, SIGNATURE, now);
        assert_eq!(at(NOW + TOLERANCE_SECS), Ok(()));
        assert_eq!(at(NOW - TOLERANCE_SECS), Ok(()));
        assert_eq!(at(NOW + TOLERANCE_SECS + 1), Err(Invalid::Timestamp));
        assert_eq!(at(NOW - TOLERANCE_SECS - 1), Err(Invalid::Timestamp));
        assert_eq!(
            verify(&k, MSG_ID, "soon", BODY, SIGNATURE, NOW),
            Err(Invalid::Timestamp)
        );
    }

    #[test]
    fn secrets_need_the_prefix_and_base64() {
        assert!(Key::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Key::parse("whsec_not base64!").is_err());
        let e = Key::parse("whsec_not base64!").err().unwrap_or_default();
        assert!(!e.contains("not base64!"), "echoes the secret: {e}");
    }
}
