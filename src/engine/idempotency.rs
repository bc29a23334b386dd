//! The idempotency room of the seam: the [`IdempotencyStore`] trait and its records.
//!
//! It owns the claim on an `Idempotency-Key` and the response remembered for it. It never
//! writes a completed response on its own: that is written by the same atomic call as the
//! effect it describes ([`OrderStore`](super::OrderStore)), so a replay can never describe an
//! effect that did not happen.

use super::EngineResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A response remembered for an `Idempotency-Key`, written in the same atomic step as the
/// effect it describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotentResponse {
    /// Scoped key: principal and client key.
    pub key: String,
    pub fingerprint: String,
    pub status: u16,
    pub body: Value,
    #[serde(skip)]
    pub ttl: Duration,
    /// The claim this response completes ([`IdempotencyBegin::Started`]'s `claim`): an engine
    /// that can tell stores the effect and the response only while the key is still that
    /// claim, so a request whose claim was abandoned (it timed out) and taken by a retry
    /// meanwhile changes nothing. Empty: unconditional.
    #[serde(skip)]
    pub claim: String,
}

/// What `begin` found for an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyBegin {
    /// No earlier request: this caller owns the key until it completes or abandons it.
    /// `claim` names this ownership (pass it on in [`IdempotentResponse::claim`]); empty
    /// where the engine needs none (the memory engine applies each step at once).
    Started { claim: String },
    /// The first request with this key is still being processed.
    InFlight { fingerprint: String },
    /// The first request completed: replay its response (if the fingerprint matches).
    Completed(IdempotentResponse),
}

/// Idempotency records for `Idempotency-Key`.
///
/// A key is found where its claim lives: the key's own partition ([`idempotency_partition`];
/// the only one by default). The engine call that makes a request's effect writes the
/// completed response in the same atomic step, in the partition of the order it acts on; when
/// that is not the key's, the engine then copies it to the key's partition, and a claim that
/// finds the key free there looks in the order's partition too, so a response written with
/// its effect is always found (a crash between the two writes costs a retry a 409 until the
/// in-flight claim expires, never a second effect). A request that creates an order under an
/// id the server draws passes no order: the id is drawn in the key's partition.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with `fingerprint` acting on `order_id` (`None`: a new order
    /// whose id is drawn in the key's partition), or reports what an earlier request left. A
    /// claim that is never completed expires after `in_flight_ttl`.
    async fn begin_idempotent(
        &self,
        key: &str,
        order_id: Option<&str>,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin>;

    /// Drops an in-flight claim whose request failed, so the client may retry.
    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()>;
}

/// The partition among `partitions` whose claims hold `key`: CRC-32 of the (scoped) key, as
/// for an order id. A server-drawn order id for a request with the key is drawn there.
pub fn idempotency_partition(key: &str, partitions: usize) -> usize {
    crate::model::partition_of(key, partitions)
}
