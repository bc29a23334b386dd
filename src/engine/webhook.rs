//! The webhook part of the engine seam (DESIGN 1.2 webhook endpoints, 1.5 deliveries):
//! partner endpoints, deliveries with their attempt log, the durable retry schedule, and the
//! consumer group through which the event log becomes deliveries exactly once however many
//! nodes run.
//!
//! Every multi-key change is one engine call, so an engine can make it atomic (Redis: one Lua
//! script): a crash can neither lose a scheduled retry nor schedule it twice, and an event is
//! acknowledged in the same step that stores its deliveries.

use super::{EngineResult, LogEntry};
use crate::model::EventId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The consumer group on the event log through which events become deliveries.
pub const DISPATCH_GROUP: &str = "webhooks";

/// Attempts kept per delivery: the newest; older ones drop off the log.
pub const ATTEMPTS_KEPT: usize = 50;

/// The reason an endpoint is disabled with when it failed without a success for longer than
/// `disable_after` (both engines use it, so the text is the same whichever runs).
pub fn failing_too_long_reason(disable_after: Duration) -> String {
    format!(
        "failing without a successful delivery for more than {}",
        humantime::format_duration(disable_after)
    )
}

/// Lost ranges kept by [`WebhookStore::lost_events`].
pub const LOST_RANGES_KEPT: usize = 100;

/// What [`WebhookStore::claim_events`] hands out: the entries, and any gap found on the way.
/// Derefs to the entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimedEvents {
    pub entries: Vec<LogEntry>,
    /// Gaps found on the way (at most one per partition).
    pub lost: Vec<LostEvents>,
}

impl std::ops::Deref for ClaimedEvents {
    type Target = [LogEntry];
    fn deref(&self) -> &[LogEntry] {
        &self.entries
    }
}

/// Events trimmed from the log before any dispatcher read them: no endpoint received them.
/// Every lost id lies strictly between `after_id` (the last entry the dispatchers had read,
/// `0-0` for none) and `before_id` (the first entry still in the log when the gap was found).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LostEvents {
    pub after_id: String,
    pub before_id: String,
    /// How many events were lost.
    pub count: u64,
    pub detected_at_ms: u64,
}

/// A partner's webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `ep_` + a UUIDv7 (simple form).
    pub id: String,
    /// The owner; `None` for an admin endpoint that receives every order's events.
    #[serde(default)]
    pub partner_id: Option<String>,
    pub url: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Event types delivered (`order.shipped`, `order.*`); empty means all.
    #[serde(default)]
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why the endpoint was disabled (`410 Gone`, failing for `disable_after`, by a user).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Signing secrets, newest first: after a rotation the previous one keeps signing until
    /// its `expires_at_ms`.
    pub secrets: Vec<EndpointSecret>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The first failed attempt since the last success (endpoint health).
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    /// Whether one order's deliveries to this endpoint go out one at a time, in event order.
    #[serde(default)]
    pub ordering: Ordering,
}

/// How an endpoint's deliveries are ordered (`ordering` in the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = WebhookOrdering)]
pub enum Ordering {
    /// Every delivery is attempted as soon as it is due (the default).
    #[default]
    None,
    /// One order's deliveries are attempted one at a time in event (version) order: a delivery
    /// waits while an earlier one of the same order to the same endpoint is pending. A head
    /// that ends (succeeds, or fails for good) releases the next one.
    PerOrder,
}

/// The place of an ordered delivery (to a [`Ordering::PerOrder`] endpoint) in its order's
/// line: deliveries of one (endpoint, order) go out one at a time, lowest version first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub order_id: String,
    /// The order's version of the delivered event.
    pub version: u64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSecret {
    /// `whsec_` + base64 of at least 24 random bytes.
    pub secret: String,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("EndpointSecret")
            .field("secret", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryState {
    /// Scheduled or being attempted.
    Pending,
    Succeeded,
    /// The schedule is exhausted (or the endpoint answered 410): kept for manual retry.
    Failed,
}

/// One event for one endpoint. Its id is the `webhook-id`, the same across retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `msg_` + a value derived from (event id, endpoint id), so a redelivered event maps to
    /// the same delivery.
    pub id: String,
    pub endpoint_id: String,
    /// The endpoint owner's partner id (for listing by partner).
    #[serde(default)]
    pub partner_id: Option<String>,
    pub event_id: String,
    pub event_type: String,
    /// The exact request body, fixed when the delivery is created.
    pub body: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// When the next attempt is due (`Pending` only).
    #[serde(default)]
    pub next_attempt_at_ms: Option<u64>,
    #[serde(default)]
    pub last_status_code: Option<u16>,
    /// Set for a delivery to a [`Ordering::PerOrder`] endpoint: it waits (`Pending` without
    /// `next_attempt_at_ms`) while an earlier delivery of its order is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_line: Option<OrderLine>,
}

/// One HTTP attempt of a delivery, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub at_ms: u64,
    #[serde(default)]
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// The first 20 KB of the response body.
    #[serde(default)]
    pub response: String,
}

/// A delivery taken by [`WebhookStore::claim_due`]: what an attempt needs besides the body.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub id: String,
    pub endpoint_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it became due: its scheduled time, or the end of the lease of an attempt that
    /// never finished.
    pub due_ms: u64,
    /// For a delivery with an [`OrderLine`]: its event's id (as `Delivery::event_id`), which
    /// the sender hands to [`WebhookStore::ordered_turn`] before the attempt.
    pub ordered_event_id: Option<String>,
}

/// What [`WebhookStore::ordered_turn`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedTurn {
    /// Every earlier event of the log has its deliveries and none of its order's line comes
    /// first: attempt it.
    Ready,
    /// An earlier event of the log is claimed by a dispatcher and not yet turned into
    /// deliveries (it may be an earlier event of the same order): try again a little later.
    EarlierEventsPending,
    /// A lower version of its order's line exists (created after this one by another
    /// dispatcher): that one is scheduled now and this one waits behind it.
    Yielded,
}

/// What [`WebhookStore::claim_due`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DueBatch {
    /// [`WebhookStore::endpoints_version`], read in the same step as the claim: a sender
    /// caching the endpoints knows from it whether its cache is current.
    pub endpoints_version: u64,
    pub due: Vec<DueDelivery>,
}

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded,
    /// Try again at this time (ms since the epoch).
    RetryAt(u64),
    /// No more attempts: the delivery is kept as failed.
    Failed,
    /// `410 Gone`: the delivery fails and the endpoint is disabled with this reason.
    Gone(String),
}

/// One completed attempt for [`WebhookStore::finish_attempts`].
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedAttempt {
    pub delivery_id: String,
    pub attempt: Attempt,
    pub outcome: AttemptOutcome,
}

/// What [`WebhookStore::finish_attempts`] changed on an attempt's endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointHealth {
    Unchanged,
    /// The endpoint was disabled by this attempt (410, or failing for `disable_after`).
    Disabled {
        reason: String,
    },
}

/// What [`WebhookStore::create_endpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointCreation {
    Created,
    /// The endpoint's partner already has `count` endpoints, at or above the limit: nothing
    /// was stored.
    LimitReached {
        count: u64,
    },
}

/// A change of some of an endpoint's settings ([`WebhookStore::patch_endpoint`]): `None`
/// leaves a field as it is; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub rate_limit_per_second: Option<Option<u32>>,
    pub max_in_flight: Option<Option<u32>>,
    pub ordering: Option<Ordering>,
    /// Enabling a disabled endpoint clears its `disabled_reason` and `failing_since_ms`;
    /// disabling an enabled one records [`DISABLED_BY_USER`]; the same state changes nothing.
    pub enabled: Option<bool>,
    /// The endpoint's new `updated_at_ms`.
    pub updated_at_ms: u64,
}

/// The `disabled_reason` of an endpoint disabled through `PATCH {"enabled": false}`.
pub const DISABLED_BY_USER: &str = "disabled through the API";

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Creates or replaces an endpoint's settings, with no per-partner limit (the API creates
    /// with [`Self::create_endpoint`] and changes with [`Self::patch_endpoint`] and
    /// [`Self::rotate_secret`], which never write settings they were not asked to). Its health
    /// (`enabled`, `disabled_reason`, `failing_since_ms`) is taken from `endpoint` only when
    /// the endpoint is new or `enabled` changes (a user enabling clears `failing_since_ms`
    /// too); otherwise the stored health is kept, so a write from an older read never resets
    /// health recorded meanwhile. The one case it cannot tell apart: an endpoint disabled
    /// between a caller's read (enabled) and its write is enabled again by that write.
    async fn put_endpoint(&self, endpoint: &Endpoint) -> EngineResult<()>;

    async fn endpoint(&self, id: &str) -> EngineResult<Option<Endpoint>>;

    /// Stores a new endpoint unless its partner already has `max_per_partner` endpoints or
    /// more (admin-created ones for that partner count too; endpoints without a partner are not
    /// limited). The count and the insert are one step: two creates racing for the last slot
    /// cannot both pass.
    async fn create_endpoint(
        &self,
        endpoint: &Endpoint,
        max_per_partner: u32,
    ) -> EngineResult<EndpointCreation>;

    /// Changes the given settings of an endpoint in one step, field by field: whatever else
    /// was written meanwhile (another PATCH's fields, a rotated secret, health recorded by the
    /// sender) stays. The endpoint as it is afterwards, `None` when there is none.
    async fn patch_endpoint(
        &self,
        id: &str,
        patch: &EndpointPatch,
    ) -> EngineResult<Option<Endpoint>>;

    /// Rotates an endpoint's signing secret in one step: `secret` becomes the current one, the
    /// current one keeps signing until `previous_expires_at_ms`, older ones stop; nothing else
    /// changes but `updated_at_ms` (= `now_ms`). The endpoint as it is afterwards, `None` when
    /// there is none.
    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        now_ms: u64,
        previous_expires_at_ms: u64,
    ) -> EngineResult<Option<Endpoint>>;

    /// The endpoints whose delivery records the retention sweep visits: every endpoint, and
    /// every deleted one whose records are not all gone yet.
    async fn sweep_targets(&self) -> EngineResult<Vec<String>>;

    /// Deletes up to `max` delivery records of an endpoint created before `created_before_ms`
    /// (of a deleted endpoint: whatever their age), with their attempt logs, their places in
    /// the indexes and on the schedule, in one step; how many. Several nodes may sweep at
    /// once: a record is deleted once, the others find it gone.
    async fn sweep_deliveries(
        &self,
        endpoint_id: &str,
        created_before_ms: u64,
        max: usize,
    ) -> EngineResult<usize>;

    /// Every endpoint (the dispatcher matches events against them), in id order.
    async fn endpoints(&self) -> EngineResult<Vec<Endpoint>>;

    /// A counter every endpoint write moves forward in the same step as the write (put,
    /// delete, and a disabling by [`Self::finish_attempt`]; not the `failing_since_ms`
    /// bookkeeping). Readers cache [`Self::endpoints`] beside the version they read *before*
    /// it, and compare with the version read *after* claiming work: an endpoint written before
    /// an event was appended has moved the counter by the time the event can be read, so an
    /// unchanged version proves the cache current for every claimed event.
    async fn endpoints_version(&self) -> EngineResult<u64>;

    /// Deletes an endpoint and takes its pending deliveries off the schedule; its delivery
    /// records are left to the retention sweep ([`Self::sweep_deliveries`]), which deletes
    /// them whatever their age. `false` when there was none.
    async fn delete_endpoint(&self, id: &str) -> EngineResult<bool>;

    /// Events for the dispatcher through the consumer group `webhooks` on the event log:
    /// entries not yet handed to any node, then entries handed out more than `reclaim_after`
    /// ago and never acknowledged (a node died with them).
    ///
    /// Retention honesty: when entries the group had not read yet were trimmed from the log
    /// (the dispatchers fell behind by more than the retention), the claim that reads past
    /// them reports the gap in [`ClaimedEvents::lost`] and records it (see
    /// [`Self::lost_events`]) in the same step, so exactly one node reports each gap.
    async fn claim_events(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> EngineResult<ClaimedEvents>;

    /// The gaps in webhook dispatch recorded so far (oldest first, the newest
    /// [`LOST_RANGES_KEPT`]): events trimmed from the log before any dispatcher read them.
    async fn lost_events(&self) -> EngineResult<Vec<LostEvents>>;

    /// Stores the deliveries of a claimed batch of events (each only if its id is new),
    /// schedules them at their `next_attempt_at_ms`, and acknowledges every event of the batch
    /// in the consumer group, all in one step: events no endpoint wants are acknowledged in
    /// the same step, so a batch costs one engine call however many of its events make
    /// deliveries (Redis: one script call, or one plain `XACK` when nothing is delivered). A
    /// `Pending` delivery without `next_attempt_at_ms` is due at its `created_at_ms`. A
    /// delivery whose id exists already is left exactly as it is (a redelivered event changes
    /// nothing).
    /// `events` are (partition, entry id) pairs.
    ///
    /// A delivery with an [`OrderLine`] joins its (endpoint, order) line and is scheduled
    /// only when the line was empty; otherwise it waits (`Pending`, no `next_attempt_at_ms`)
    /// until every delivery of the line with a lower version has ended: when a line's head
    /// ends (succeeds, or fails for good), [`Self::finish_attempts`] schedules the line's
    /// lowest version at the attempt's time. Returns how many new deliveries were made to
    /// wait so (0 when none is ordered).
    async fn create_deliveries(
        &self,
        events: &[(usize, EventId)],
        deliveries: &[Delivery],
    ) -> EngineResult<usize>;

    /// Stores and schedules deliveries that no log entry stands behind (operational notices
    /// such as `endpoint.disabled`), with the same rules as [`Self::create_deliveries`] but
    /// nothing to acknowledge.
    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> EngineResult<()>;

    /// Takes up to `max` deliveries due at `now_ms`, earliest first: each is re-scheduled at
    /// `now_ms + lease` before it is returned, so a node that dies mid-attempt leaves it to be
    /// taken again, and two nodes never take the same delivery at once. Only what an attempt
    /// needs besides the body comes back (the sender keeps bodies it knows and fetches the
    /// others with [`Self::delivery_bodies`]), with the endpoints version read in the same
    /// step. A scheduled delivery whose record or endpoint is gone is dropped from the
    /// schedule.
    async fn claim_due(&self, now_ms: u64, max: usize, lease: Duration) -> EngineResult<DueBatch>;

    /// Whether an ordered delivery (one with an [`OrderLine`], just claimed) may be attempted
    /// now. Two dispatchers may turn an order's consecutive events into deliveries in either
    /// order, so the later version can head the line before the earlier one exists. First it
    /// checks that no event of the log before `event_id` (in its partition) is still claimed
    /// and unacknowledged (an acknowledged event has its deliveries); then, in that order, that
    /// no lower version is in the delivery's line, else that one is scheduled at `now_ms` and
    /// this one waits for its turn ([`OrderedTurn::Yielded`]).
    async fn ordered_turn(
        &self,
        delivery_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> EngineResult<OrderedTurn>;

    /// The bodies of deliveries, in the order asked (`None` for an unknown id), in one round
    /// trip.
    async fn delivery_bodies(&self, ids: &[String]) -> EngineResult<Vec<Option<String>>>;

    /// The earliest scheduled time, if anything is scheduled.
    async fn next_due_ms(&self) -> EngineResult<Option<u64>>;

    /// Records attempts and their outcomes, in order, in one step (the sender flushes the
    /// attempts it completed since its last flush): per attempt, the attempt joins the
    /// delivery's log, the delivery's state and schedule change, and the endpoint's health is
    /// updated (a success clears `failing_since_ms`; a failure sets it if unset and disables
    /// the endpoint when it is older than `disable_after`; `Gone` disables it). "Now" is each
    /// `attempt.at_ms`. The log keeps the newest [`ATTEMPTS_KEPT`] attempts. An unknown
    /// delivery id changes nothing and reports `Unchanged`. One [`EndpointHealth`] per
    /// attempt, in order.
    ///
    /// Endpoint health (`enabled`, `disabled_reason`, `failing_since_ms`) is kept apart from
    /// the endpoint's settings: these writes never touch the settings, and
    /// [`Self::put_endpoint`] touches health only when the endpoint it is given changes
    /// `enabled`.
    async fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        disable_after: Duration,
    ) -> EngineResult<Vec<EndpointHealth>>;

    /// [`Self::finish_attempts`] for one attempt.
    async fn finish_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        disable_after: Duration,
    ) -> EngineResult<EndpointHealth> {
        let finished = FinishedAttempt {
            delivery_id: delivery_id.to_string(),
            attempt: attempt.clone(),
            outcome: outcome.clone(),
        };
        let mut health = self.finish_attempts(&[finished], disable_after).await?;
        Ok(health.pop().unwrap_or(EndpointHealth::Unchanged))
    }

    async fn delivery(&self, id: &str) -> EngineResult<Option<Delivery>>;

    /// The attempts of one delivery, oldest first.
    async fn attempts(&self, delivery_id: &str) -> EngineResult<Vec<Attempt>>;

    /// An endpoint's deliveries, newest first, created before `before_ms` when given.
    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        before_ms: Option<u64>,
    ) -> EngineResult<Vec<Delivery>>;

    /// Manual retry: the delivery becomes pending and due at `at_ms` (whatever its state; its
    /// attempt count is kept). An ordered one (with an [`OrderLine`]) rejoins its line: due
    /// at `at_ms` when the line is empty (or it is the line's scheduled head), else it waits
    /// for its turn by version. `false` when unknown.
    async fn retry_delivery(&self, delivery_id: &str, at_ms: u64) -> EngineResult<bool>;

    /// Schedules every failed delivery of the endpoint created at or after `since_ms` again
    /// at `at_ms` (ordered ones rejoin their lines as in [`Self::retry_delivery`]); how many.
    async fn recover_failed(
        &self,
        endpoint_id: &str,
        since_ms: u64,
        at_ms: u64,
    ) -> EngineResult<usize>;
}
