//! Configuration: built-in defaults < `--config FILE` < environment `HERALD_<SECTION>__<KEY>` <
//! command-line flags. `config/herald.toml` documents every key with its default; the
//! `Default` impls in `sections` are the single source of those defaults.
//!
//! One room per concern: `sections` (what each `[section]` holds), `layers` (where values
//! come from), `validate` (what is refused). This module is a leaf: it must never import
//! `auth` or `webhooks`, which import it. Validation needs their checks (the SSRF guard's
//! CIDR parser, the JWT key rules), so it takes them as a [`Checks`] value through
//! [`Config::load_with`]; [`Config::load`], the call everyone makes, is defined in
//! `crate::config_checks`, the one place that knows both sides and fills in the real checks.

mod layers;
mod sections;
mod steps;
#[cfg(test)]
mod tests;
mod validate;

pub use layers::Overrides;
pub use sections::{
    AuthConfig, EngineConfig, EngineKind, GraphqlConfig, HttpConfig, JwtConfig, PartnerKey,
    PushConfig, QueueConfig, WebhooksConfig, WorkerConfig, WorkflowConfig,
};
pub use steps::{
    CatchConfig, ChoiceConfig, ERROR_CLASSES, Jitter, RequestConfig, RetryConfig, StepConfig,
    StepKind,
};
pub use validate::{Checks, MIN_HEADER_BYTES};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub engine: EngineConfig,
    pub auth: AuthConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub workflow: WorkflowConfig,
    pub http: HttpConfig,
    pub push: PushConfig,
    pub graphql: GraphqlConfig,
    pub webhooks: WebhooksConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            engine: EngineConfig::default(),
            auth: AuthConfig::default(),
            queue: QueueConfig::default(),
            worker: WorkerConfig::default(),
            workflow: WorkflowConfig::default(),
            http: HttpConfig::default(),
            push: PushConfig::default(),
            graphql: GraphqlConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

impl Config {
    /// Builds the configuration from the four layers and validates it with `checks`. `env`
    /// is the process environment (a parameter so tests can pass their own).
    pub fn load_with(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
        checks: &Checks,
    ) -> anyhow::Result<Config> {
        let config = layers::layered(file, env, overrides)?;
        config.validate(checks)?;
        Ok(config)
    }
}
