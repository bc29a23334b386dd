//! The HTTP plumbing `api/` and `push/` share, none of it about a resource:
//!
//! - [`serve`](mod@serve): the accept loop and the connections' limits (slow heads, large
//!   heads, slow bodies, graceful shutdown).
//! - [`problem`]: RFC 9457 problem+json, the form of every error answer.
//! - [`ratelimit`]: the per-credential token buckets of `[http] rate_limit_*`.
//! - [`routes`]: a router that records the (method, path) table it serves.
//!
//! It never imports `api/`, `push/` or the node's state: they import it.

pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod serve;

pub use serve::{BodyTimeout, serve};
