//! Webhook deliveries (DESIGN 1.5). For now the two self-contained building blocks the
//! dispatcher is built on:
//!
//! - [`signature`]: Standard Webhooks secrets, signing and verification (`webhook-signature`).
//! - [`ssrf`]: the connect-time SSRF defence: the address classifier, `allow_networks`, the
//!   guarded DNS resolver and the HTTP client every delivery must go through.
//!
//! Nothing here touches the engine or the network on its own; the dispatcher owns that.

pub mod signature;
pub mod ssrf;
