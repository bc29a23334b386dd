//! The node's shared state: what every request this process serves can reach, HTTP API and
//! push alike (the engine, the configuration, the key ring, the per-credential rate limiter,
//! the metrics, the webhook SSRF exemptions and wake-up, the long-polls' waiting room), and
//! the admission of a caller (authentication, then its rate limit) that both use.
//!
//! It owns no role's state (the push hub lives in `push::PushState`, the workers in their
//! tasks) and knows no route: `api/` and `push/` import it, it never imports them.

use crate::auth::{AuthError, Caller, KeyRing, Principal, credential_from_headers};
use crate::config::Config;
use crate::engine::Engine;
use crate::http::problem::Problem;
use crate::http::ratelimit::{self, ApiRateLimiter, RateLimited};
use crate::longpoll::LongPolls;
use crate::metrics::Metrics;
use axum::http::HeaderMap;
use std::sync::Arc;
use std::time::Instant;

/// A handle on the node's shared state, as every handler receives it. Cheap to clone (one
/// `Arc`).
#[derive(Clone)]
pub struct Node(pub Arc<Shared>);

pub struct Shared {
    pub engine: Arc<dyn Engine>,
    /// The workflow with its compiled steps, and the key its callback tokens are signed with.
    pub workflow: Arc<crate::workflow::Workflow>,
    /// Wakes this node's workflow timer loop (if it runs the worker role) when a request
    /// schedules a timer (a callback's heartbeat deadline).
    pub workflow_timers: Arc<tokio::sync::Notify>,
    pub config: Config,
    pub keys: KeyRing,
    /// Per-credential token buckets (`[http] rate_limit_*`), checked by [`Shared::admit`].
    pub rate_limiter: ApiRateLimiter,
    pub metrics: Arc<Metrics>,
    /// The SSRF guard's exemptions (`webhooks.allow_networks`): endpoint URLs are checked
    /// against it when they are created or changed.
    pub webhook_allow: Arc<crate::webhooks::ssrf::AllowList>,
    /// Wakes this node's webhook sender when a request schedules a delivery for now.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// The long-polls of `GET /v1/events?waitMs=` waiting on this node: their bounds
    /// (`[http] long_poll_*`) and the one shared wait they are served from.
    pub long_polls: Arc<LongPolls>,
}

impl std::ops::Deref for Node {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Why a request's caller was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// No credential (`None`) or a refused one.
    Unauthenticated(Option<AuthError>),
    /// Over its credential's rate limit.
    RateLimited(RateLimited),
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Problem {
        match refusal {
            Refusal::Unauthenticated(None | Some(AuthError::Unknown)) => Problem::unauthorized(),
            // The message names the reason only (never the token): safe to send.
            Refusal::Unauthenticated(Some(e)) => Problem::unauthorized().detail(e.to_string()),
            Refusal::RateLimited(limited) => limited.into(),
        }
    }
}

impl Shared {
    /// Admits a request's caller: authenticates its credential, then takes one token from that
    /// credential's bucket. Every HTTP route that needs a caller comes through here (the
    /// [`Principal`] extractor, `POST /graphql`), so limits hold for all of them alike. The
    /// WebSocket upgrade does not: connections are bounded by `[push]` (connections per node,
    /// subscribe rate per connection) instead.
    pub fn admit(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        self.admit_caller(headers).map(|caller| caller.principal)
    }

    /// [`Shared::admit`], keeping which credential the caller came with (for limits per
    /// credential beyond the rate, such as waiting long-polls).
    pub fn admit_caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let credential = credential_from_headers(headers).ok_or(Refusal::Unauthenticated(None))?;
        let caller = self
            .keys
            .identify(&credential)
            .map_err(|e| Refusal::Unauthenticated(Some(e)))?;
        if let Err(limited) = self.rate_limiter.check(&caller, Instant::now()) {
            let role = ratelimit::role(&caller.principal);
            self.metrics.api_rate_limited.inc(role);
            tracing::debug!(role, credential = ?caller.credential, "rate limited");
            return Err(Refusal::RateLimited(limited));
        }
        Ok(caller)
    }
}
