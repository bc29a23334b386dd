//! Herald: a real-time order status push server. `README.md` says what it does;
//! `shared/DESIGN.md` is the contract. Modules, each owning one concern:
//!
//! - [`config`]: the layered configuration.
//! - [`engine`]: every byte of state (queue, status store, event log, idempotency) behind one
//!   seam, with the memory and Redis engines.
//! - [`node`]: the state every request can reach (engine, config, keys, limiter, metrics) and
//!   the admission of a caller, shared by `api` and `push`.
//! - [`api`]: the HTTP API; [`auth`]: who is calling; [`ratelimit`]: token buckets.
//! - [`workflow`]: the order workflow's rules (transitions, business validation, events);
//!   [`worker`] runs them over the command queue.
//! - `backoff`: the retry delay every reconnect loop waits by.
//! - [`tail`]: follows the event log for this node's consumers; [`longpoll`]: the bounded
//!   long-polls of `GET /v1/events`, served from one shared wait per node.
//! - [`graphql`]: the schema, documents, filters and projections.
//! - [`push`]: WebSocket subscriptions: the hub, the protocols, `POST /graphql`, the console.
//! - `resync`: the snapshots of a resync (current statuses as `order.snapshot` events).
//! - [`webhooks`]: partner webhooks: dispatcher, sender, signatures and the SSRF guard.
//! - [`server`]: `herald serve`, roles and shutdown; [`http`]: the HTTP plumbing api and push
//!   share (connection limits, problem+json, rate limits, the route table).
//! - `fuzzing` (hidden, cargo feature `fuzzing`): the entry points of the cargo-fuzz targets in
//!   `fuzz/`.

mod api;
pub mod auth;
mod backoff;
pub mod config;
mod config_checks;
pub mod engine;
// Compiled for the fuzz targets (`--features fuzzing`) and for the unit tests, which check
// the harness itself; never into the server.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod graphql;
mod http;
mod longpoll;
mod metrics;
pub mod model;
mod node;
mod push;
mod ratelimit;
mod resync;
pub mod server;
mod tail;
#[cfg(test)]
mod testing;
pub mod webhooks;
mod worker;
pub mod workflow;
