//! Validation: the combinations of values Herald refuses to start with, each refused with a
//! message naming the key. It owns the bounds (at least 1, longer than 0s, ...) and never
//! parses what another module owns: the SSRF guard's CIDRs and the auth module's JWT keys are
//! checked through [`Checks`], which the caller fills in, so `config` stays a leaf that
//! `auth` and `webhooks` import without being imported back.

use super::{Config, EngineConfig, EngineKind};
use crate::model::OrderStatus;
use anyhow::bail;
use std::time::Duration;

/// The smallest `http.max_header_bytes`: room for a request line and ordinary headers.
pub const MIN_HEADER_BYTES: usize = 1024;

/// The checks validation borrows from the modules that own the values' meaning. Plain
/// function pointers and a number rather than a trait: there is one real set (built where
/// `auth` and the SSRF guard are known, `crate::config_checks`) and nothing to hold state.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Parses `webhooks.allow_networks`; the error is the whole message shown.
    pub allow_networks: fn(&[String]) -> Result<(), String>,
    /// The shortest `auth.jwt.hs256_secret` accepted, in bytes (when one is set).
    pub hs256_min_bytes: usize,
    /// Parses a non-empty `auth.jwt.rs256_public_key_pem`.
    pub rs256_key: fn(&str) -> anyhow::Result<()>,
    /// Parses a workflow choice expression (`workflow.steps.<status>.choices[].when`).
    pub choice: fn(&str) -> Result<(), String>,
}

impl Config {
    pub(super) fn validate(&self, checks: &Checks) -> anyhow::Result<()> {
        let wf = &self.workflow;
        if !wf.allows(OrderStatus::Accepted, OrderStatus::Confirmed)
            || !wf.allows(OrderStatus::Accepted, OrderStatus::Rejected)
        {
            bail!(
                "workflow.transitions: `accepted` must allow `confirmed` and `rejected` (the worker's outcomes)"
            );
        }
        for (status, step) in &wf.steps {
            let key = format!("workflow.steps.{status}");
            step.check().map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            for target in step.targets() {
                if !wf.allows(*status, target) {
                    bail!(
                        "{key}: moves to `{target}`, which workflow.transitions does not allow from `{status}`"
                    );
                }
            }
            for choice in &step.choices {
                (checks.choice)(&choice.when)
                    .map_err(|e| anyhow::anyhow!("{key}: choice `{}`: {e}", choice.when))?;
            }
        }
        if wf.step_history_limit == 0 {
            bail!("workflow.step_history_limit must be at least 1");
        }
        if !wf.task_token_secret.is_empty() && wf.task_token_secret.len() < 32 {
            bail!("workflow.task_token_secret must be at least 32 bytes");
        }
        let push_secret = &self.push.stream_token_secret;
        if !push_secret.is_empty() && push_secret.len() < 32 {
            bail!("push.stream_token_secret must be at least 32 bytes");
        }
        if self.engine.kind == EngineKind::Redis && push_secret.is_empty() {
            bail!(
                "push.stream_token_secret is required with the redis engine (every node must accept the stream tokens the others mint); set at least 32 random bytes, e.g. HERALD_PUSH__STREAM_TOKEN_SECRET=$(openssl rand -hex 32)"
            );
        }
        if self.engine.kind == EngineKind::Redis
            && wf.task_token_secret.is_empty()
            && wf
                .steps
                .values()
                .any(|s| s.kind == super::StepKind::Callback)
        {
            bail!(
                "workflow.task_token_secret is required with the redis engine when a step is a callback (every node must verify the tokens the others issued)"
            );
        }
        if !wf.allow_networks.is_empty() {
            (checks.allow_networks)(&wf.allow_networks)
                .map_err(|e| anyhow::anyhow!("workflow.allow_networks: {e}"))?;
        }
        if self.queue.max_receives == 0 {
            bail!("queue.max_receives must be at least 1");
        }
        if self.worker.batch_size == 0 || self.worker.batches_in_flight == 0 {
            bail!("worker.batch_size and worker.batches_in_flight must be at least 1");
        }
        if self.queue.visibility_timeout < Duration::from_millis(100) {
            bail!("queue.visibility_timeout must be at least 100ms");
        }
        if self.engine.history_limit == 0 {
            bail!("engine.history_limit must be at least 1");
        }
        if self.engine.max_blocking_connections == 0 {
            bail!("engine.max_blocking_connections must be at least 1");
        }
        let partitions = self.engine.partitions;
        if !(1..=EngineConfig::MAX_PARTITIONS).contains(&partitions) {
            bail!(
                "engine.partitions must be between 1 and {}",
                EngineConfig::MAX_PARTITIONS
            );
        }
        if partitions > 1 && self.engine.kind == EngineKind::Memory {
            bail!(
                "engine.partitions applies to the Redis engine only; the memory engine has one \
                 partition (set engine.partitions = 1, or kind = \"redis\")"
            );
        }
        if partitions > 1
            && !self
                .engine
                .events_stream_key()
                .contains(EngineConfig::HASH_TAG)
        {
            bail!(
                "engine.events_stream `{}` has no `{}` hash tag: with engine.partitions > 1 \
                 partition k's stream is its name with `{}` as `{{pk}}`",
                self.engine.events_stream_key(),
                EngineConfig::HASH_TAG,
                EngineConfig::HASH_TAG
            );
        }
        for key in self
            .auth
            .admin_keys
            .iter()
            .chain(self.auth.partner_keys.iter().map(|p| &p.key))
        {
            if key.len() < 16 {
                bail!("auth: every API key must be at least 16 characters long");
            }
        }
        if self.http.rate_limit_burst == 0
            || self
                .auth
                .partner_keys
                .iter()
                .any(|p| p.rate_limit_burst == Some(0))
        {
            bail!("http.rate_limit_burst and partner keys' rate_limit_burst must be at least 1");
        }
        let http = &self.http;
        if http.max_body_bytes == 0 {
            bail!("http.max_body_bytes must be at least 1");
        }
        if http.max_header_bytes < MIN_HEADER_BYTES {
            bail!("http.max_header_bytes must be at least {MIN_HEADER_BYTES}");
        }
        // The JSON parser itself refuses anything deeper than 128.
        if !(1..=128).contains(&http.max_json_depth) {
            bail!("http.max_json_depth must be between 1 and 128");
        }
        for (key, value) in [
            ("http.long_poll_max_waiting", http.long_poll_max_waiting),
            (
                "http.long_poll_max_waiting_per_credential",
                http.long_poll_max_waiting_per_credential,
            ),
            ("push.max_snapshot_orders", self.push.max_snapshot_orders),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        for (key, value) in [
            ("http.header_read_timeout", http.header_read_timeout),
            ("http.body_read_timeout", http.body_read_timeout),
            ("http.long_poll_max_wait", http.long_poll_max_wait),
            (
                "push.connection_init_timeout",
                self.push.connection_init_timeout,
            ),
            ("push.keepalive_interval", self.push.keepalive_interval),
            ("push.stream_token_ttl", self.push.stream_token_ttl),
            (
                "push.sse_heartbeat_interval",
                self.push.sse_heartbeat_interval,
            ),
        ] {
            if value.is_zero() {
                bail!("{key} must be longer than 0s");
            }
        }
        let push = &self.push;
        let gql = &self.graphql;
        for (key, value) in [
            ("push.max_connections", push.max_connections),
            ("push.max_message_bytes", push.max_message_bytes),
            ("push.outbound_queue_bytes", push.outbound_queue_bytes),
            ("push.subscribe_rate", push.subscribe_rate as usize),
            ("graphql.max_document_bytes", gql.max_document_bytes),
            ("graphql.max_depth", gql.max_depth),
            ("graphql.max_fields", gql.max_fields),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        (checks.allow_networks)(&self.webhooks.allow_networks).map_err(|e| anyhow::anyhow!(e))?;
        let hooks = &self.webhooks;
        if hooks.retry_schedule.is_empty() {
            bail!("webhooks.retry_schedule must hold at least one interval (the first attempt)");
        }
        if !(0.0..1.0).contains(&hooks.jitter) {
            bail!("webhooks.jitter must be at least 0 and below 1");
        }
        if hooks.max_in_flight == 0 {
            bail!("webhooks.max_in_flight must be at least 1");
        }
        if hooks.lease < hooks.request_timeout + hooks.connect_timeout {
            bail!(
                "webhooks.lease must be at least request_timeout + connect_timeout (an attempt must end before another node may take its delivery)"
            );
        }
        if !(1..=16).contains(&hooks.dispatchers) {
            bail!("webhooks.dispatchers must be between 1 and 16");
        }
        if hooks.dispatch_linger > std::time::Duration::from_secs(1) {
            bail!(
                "webhooks.dispatch_linger must be at most 1s (it delays the first attempt of every delivery)"
            );
        }
        if !(1..=10_000).contains(&hooks.max_endpoints_per_partner) {
            bail!("webhooks.max_endpoints_per_partner must be between 1 and 10000");
        }
        // The schedule at its slowest: every wait stretched by the jitter and doubled (a
        // timeout or a 429 backs off twice as long, see `webhooks::retry`).
        let schedule: std::time::Duration = hooks
            .retry_schedule
            .iter()
            .map(|wait| wait.mul_f64(2.0 * (1.0 + hooks.jitter)))
            .sum();
        if hooks.delivery_retention < std::time::Duration::from_secs(1)
            || hooks.delivery_retention <= schedule
        {
            bail!(
                "webhooks.delivery_retention must be at least 1s and longer than the whole retry_schedule at its slowest ({}: each wait with the jitter, doubled for timeouts and 429s): a delivery must not be deleted while it is still being retried",
                humantime::format_duration(std::time::Duration::from_secs(schedule.as_secs()))
            );
        }
        if hooks.delivery_sweep_interval < std::time::Duration::from_millis(100) {
            bail!("webhooks.delivery_sweep_interval must be at least 100ms");
        }
        let jwt = &self.auth.jwt;
        if !jwt.hs256_secret.is_empty() && jwt.hs256_secret.len() < checks.hs256_min_bytes {
            bail!(
                "auth.jwt.hs256_secret must be at least {} bytes",
                checks.hs256_min_bytes
            );
        }
        if !jwt.rs256_public_key_pem.is_empty() {
            (checks.rs256_key)(&jwt.rs256_public_key_pem)?;
        }
        // The registered claims already mean something else: `sub` is the customer, the rest
        // are checked by the verifier. An empty name would bind no token to anything.
        if jwt.partner_claim.is_empty()
            || ["sub", "exp", "nbf", "iat", "iss", "aud", "jti"]
                .contains(&jwt.partner_claim.as_str())
        {
            bail!(
                "auth.jwt.partner_claim must name a claim of its own (not empty, not a registered claim such as `sub`)"
            );
        }
        Ok(())
    }
}
