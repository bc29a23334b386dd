//! Webhook deliveries (DESIGN 1.5). State lives in the engine
//! ([`crate::engine::webhook::WebhookStore`]); nothing here keeps what a restart would lose.
//!
//! - [`dispatcher`]: turns each event of the log into deliveries, exactly once.
//! - [`operational`]: notices about endpoints (`endpoint.disabled`), enqueued as deliveries
//!   without an event.
//! - [`sender`]: attempts due deliveries on the schedule, with per-endpoint [`limits`] and the
//!   [`retry`] rules.
//! - [`retention`]: deletes delivery records older than `delivery_retention`, and those of
//!   deleted endpoints.
//! - [`signature`]: Standard Webhooks secrets, signing and verification (`webhook-signature`).
//! - [`ssrf`]: the connect-time SSRF defence: the address classifier, `allow_networks`, the
//!   guarded DNS resolver and the HTTP client every delivery must go through.
//!
//! `signature` and `ssrf` touch neither the engine nor the network on their own.

pub mod dispatcher;
pub mod limits;
pub mod operational;
pub mod retention;
pub mod retry;
pub mod sender;
pub mod signature;
pub mod ssrf;
