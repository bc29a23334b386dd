//! Callback task tokens: what a callback step hands to the service it calls, and what comes
//! back to `POST /v1/tasks/{token}/success|failure`.
//!
//! A token names the order, the status and the version the order entered it at (the attempt
//! series) and the attempt whose call handed it out, signed with HMAC-SHA256 under
//! `workflow.task_token_secret`:
//! `htt1.<base64url(orderId)>.<status>.<version>.<attempt>.<base64url(mac)>`. A retried call
//! hands out a new token; the one before it no longer completes anything. It cannot be guessed or
//! forged without the secret, is compared in constant time, and is scoped: it completes only
//! that order's wait in that status at that version. Single use is the engine's part (the
//! wait it opens is closed by the first completion, see `StepStore::claim_wait`).

use crate::model::OrderStatus;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "htt1";

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskToken {
    pub order_id: String,
    pub status: OrderStatus,
    pub version: u64,
    pub attempt: u32,
}

impl TaskToken {
    /// The id of the wait this token completes (the engine's open wait on the order).
    pub fn wait_id(&self) -> String {
        wait_id(self.version, self.attempt)
    }
}

/// The wait a callback step's attempt `attempt` opens, the order having entered its status at
/// `version`.
pub fn wait_id(version: u64, attempt: u32) -> String {
    format!("cb:{version}:{attempt}")
}

/// The secret tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey(secret.to_vec())
    }

    /// A key drawn at random (the memory engine's tokens live as long as its process).
    pub fn random() -> TokenKey {
        let bytes: [u8; 32] = rand::random();
        TokenKey(bytes.to_vec())
    }

    fn mac(&self, token: &TaskToken) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(
            format!(
                "{PREFIX}\n{}\n{}\n{}\n{}",
                token.order_id, token.status, token.version, token.attempt
            )
            .as_bytes(),
        );
        mac
    }

    pub fn issue(&self, token: &TaskToken) -> String {
        let tag = self.mac(token).finalize().into_bytes();
        format!(
            "{PREFIX}.{}.{}.{}.{}.{}",
            URL_SAFE_NO_PAD.encode(token.order_id.as_bytes()),
            token.status,
            token.version,
            token.attempt,
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The token's contents if it is well formed and signed with this key; `None` otherwise
    /// (the caller answers as for an unknown token, saying nothing of why).
    pub fn verify(&self, text: &str) -> Option<TaskToken> {
        let mut parts = text.split('.');
        let (prefix, order, status, version, attempt, tag) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if prefix != PREFIX || parts.next().is_some() {
            return None;
        }
        let order_id = String::from_utf8(URL_SAFE_NO_PAD.decode(order).ok()?).ok()?;
        let status: OrderStatus = status.parse().ok()?;
        let version: u64 = version.parse().ok()?;
        let attempt: u32 = attempt.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let token = TaskToken {
            order_id,
            status,
            version,
            attempt,
        };
        self.mac(&token).verify_slice(&tag).ok()?;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_under_their_key_only_and_any_change_breaks_them() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = TaskToken {
            order_id: "ord-1".into(),
            status: OrderStatus::Confirmed,
            version: 2,
            attempt: 1,
        };
        let text = key.issue(&token);
        assert_eq!(key.verify(&text), Some(token.clone()));
        assert_eq!(TokenKey::random().verify(&text), None);
        let other = key.issue(&TaskToken {
            version: 3,
            ..token.clone()
        });
        // Swapping the version of a valid token keeps the old signature: refused.
        let parts: Vec<&str> = text.split('.').collect();
        let forged = format!(
            "{}.{}.{}.3.{}.{}",
            parts[0], parts[1], parts[2], parts[4], parts[5]
        );
        assert_eq!(key.verify(&forged), None);
        let next_attempt = format!(
            "{}.{}.{}.{}.2.{}",
            parts[0], parts[1], parts[2], parts[3], parts[5]
        );
        assert_eq!(key.verify(&next_attempt), None);
        assert_eq!(key.verify(&forged), None);
        assert!(key.verify(&other).is_some());
        for bad in [
            "",
            "htt1",
            "htt1.a.b.c.d",
            &format!("{text}.x"),
            &text[..text.len() - 2],
        ] {
            assert_eq!(key.verify(bad), None, "{bad}");
        }
        assert_eq!(token.wait_id(), "cb:2:1");
    }
}
