//! Every WebSocket close code Herald sends, by name: the RFC 6455 codes, the ones
//! `graphql-transport-ws` defines (also used by `graphql-ws` where it needs the same meaning),
//! and Herald's own (README, "Subscriptions"). Nothing else in `push/` writes a code as a
//! number, so this file is the list an operator reads to tell why a client was dropped.

/// The client asked to end the connection (`graphql-ws` `connection_terminate`).
pub const NORMAL: u16 = 1000;
/// A frame that breaks RFC 6455 (unmasked, bad opcode, fragmented control frame ...).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A message larger than `push.max_message_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server is shutting down: reconnect (to this or another node).
pub const SERVICE_RESTART: u16 = 1012;

/// The client did not keep up: its outbound queue (with the live events held for its
/// replaying subscriptions) reached `push.outbound_queue_bytes`, or its socket took no write
/// for three `push.keepalive_interval` (it stopped reading, during an `after` replay too).
pub const SLOW_CONSUMER: u16 = 4008;
/// A message the protocol does not define, or that does not parse (binary frames too).
pub const BAD_REQUEST: u16 = 4400;
/// A subscribe before the connection was acknowledged, or credentials refused at
/// `connection_init` (`graphql-ws`).
pub const UNAUTHORIZED: u16 = 4401;
/// `connection_init` credentials refused (`graphql-transport-ws`).
pub const FORBIDDEN: u16 = 4403;
/// The connection's token expired (the same code as [`FORBIDDEN`]: the credential no longer
/// admits the connection).
pub const TOKEN_EXPIRED: u16 = 4403;
/// No `connection_init` within `push.connection_init_timeout`.
pub const INIT_TIMEOUT: u16 = 4408;
/// A subscribe with an id already in use on the connection.
pub const SUBSCRIBER_EXISTS: u16 = 4409;
/// A second `connection_init`, on both subprotocols (`graphql-ws` sends a
/// `connection_error` first): a connection keeps the principal it was acknowledged as.
pub const TOO_MANY_INITS: u16 = 4429;
/// Nothing heard from the client for three keepalive intervals.
pub const KEEPALIVE_TIMEOUT: u16 = 4504;
