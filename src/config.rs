//! Configuration: built-in defaults < `--config FILE` < environment `HERALD_<SECTION>__<KEY>` <
//! command-line flags. `config/herald.toml` documents every key with its default; the
//! `Default` impls below are the single source of those defaults.

use crate::model::OrderStatus;
use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub kind: EngineKind,
    pub redis_url: String,
    pub key_prefix: String,
    /// Event stream key; empty means `<key_prefix>{p0}:events`.
    pub events_stream: String,
    /// Entries kept in the event log (Redis: approximate `MAXLEN ~`).
    pub event_retention: u64,
    /// Status history entries kept per order.
    pub history_limit: usize,
    /// How long one engine operation may take before it counts as unavailable.
    #[serde(deserialize_with = "duration")]
    pub operation_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "herald:".into(),
            events_stream: String::new(),
            event_retention: 100_000,
            history_limit: 100,
            operation_timeout: Duration::from_secs(2),
        }
    }
}

impl EngineConfig {
    /// The hash tag every key carries, so each multi-key script touches one cluster slot.
    pub const HASH_TAG: &'static str = "{p0}";

    pub fn events_stream_key(&self) -> String {
        if self.events_stream.is_empty() {
            format!("{}{}:events", self.key_prefix, Self::HASH_TAG)
        } else {
            self.events_stream.clone()
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_keys: Vec<String>,
    pub partner_keys: Vec<PartnerKey>,
    pub jwt: JwtConfig,
}

/// Customer tokens (JWT, `sub` = customerId). HS256 with a shared secret (at least 32 bytes)
/// or RS256 with a public key (PEM); both may be set, each accepts only its own algorithm.
/// `exp` and `sub` are required, `nbf` is checked when present, `iss` and `aud` are required
/// and checked when configured. `Debug` never shows the secret.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub hs256_secret: String,
    pub rs256_public_key_pem: String,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: String::new(),
            rs256_public_key_pem: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &if self.hs256_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "rs256_public_key_pem",
                &!self.rs256_public_key_pem.is_empty(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerKey {
    pub key: String,
    pub partner_id: String,
    /// This key's own `[http] rate_limit_per_second` (0 = no limit); unset: the `[http]` one.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// This key's own `[http] rate_limit_burst`; unset: the `[http]` one.
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
}

impl std::fmt::Debug for PartnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs, not even through a debug print of the config.
        f.debug_struct("PartnerKey")
            .field("key", &"<redacted>")
            .field("partner_id", &self.partner_id)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(deserialize_with = "duration")]
    pub visibility_timeout: Duration,
    pub max_receives: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub batch_size: usize,
    pub batches_in_flight: usize,
    /// How long a receive waits for work before it asks again.
    #[serde(deserialize_with = "duration")]
    pub receive_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 10,
            batches_in_flight: 5,
            receive_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowConfig {
    /// Currencies the worker accepts; an order in another currency is rejected.
    pub currencies: Vec<String>,
    /// The transition table: status -> statuses it may move to.
    pub transitions: BTreeMap<OrderStatus, Vec<OrderStatus>>,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        use OrderStatus::*;
        WorkflowConfig {
            currencies: ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"]
                .map(String::from)
                .to_vec(),
            transitions: BTreeMap::from([
                (Accepted, vec![Confirmed, Rejected, Cancelled]),
                (Confirmed, vec![Preparing, Cancelled]),
                (Preparing, vec![Shipped, Cancelled]),
                (Shipped, vec![Delivered]),
            ]),
        }
    }
}

// `WorkflowConfig::allows` (the table's check) lives in `crate::workflow` with the other rules.

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` response is remembered.
    #[serde(deserialize_with = "duration")]
    pub idempotency_ttl: Duration,
    /// Serve `/metrics` without credentials (for scrapers on a trusted network).
    pub public_metrics: bool,
    /// How long shutdown waits for in-flight requests and batches.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    // Per-credential rate limiting (README, "HTTP API"): a token bucket per API key or
    // customer-token subject, on each node.
    /// Requests per second each credential may sustain; 0 = no limit.
    pub rate_limit_per_second: u32,
    /// Requests a credential may send at once (the bucket's size); at least 1.
    pub rate_limit_burst: u32,
    /// Whether admin keys are limited too (they are the operator's own: off by default).
    pub rate_limit_admin: bool,
    /// Time allowed to receive a request's headers (from the first byte, or from the end of
    /// the previous response on a keep-alive connection); then the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Time allowed to receive a request's whole body once its headers are in; then 408.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Deepest nesting of arrays and objects a JSON body may have (1 to 128); deeper gets 400.
    pub max_json_depth: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            public_metrics: false,
            shutdown_grace: Duration::from_secs(10),
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            rate_limit_admin: false,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_json_depth: 32,
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The push hub and its WebSocket connections (DESIGN 1.4). Every limit answers with a
/// documented error or close code (README, "Subscriptions").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// WebSocket connections this node holds at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Live subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Largest message a client may send (bytes); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Bytes queued towards one connection; a client that falls further behind is closed
    /// with 4008 (slow consumer) rather than buffered without bound.
    pub outbound_queue_bytes: usize,
    /// Subscribe messages per connection per second (burst of the same size).
    pub subscribe_rate: u32,
    /// graphql-transport-ws: time allowed between upgrade and `connection_init` (4408 after).
    #[serde(deserialize_with = "duration")]
    pub connection_init_timeout: Duration,
    /// How often the server keeps idle connections alive (`ka` / ping).
    #[serde(deserialize_with = "duration")]
    pub keepalive_interval: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_connections: 10_000,
            max_subscriptions_per_connection: 100,
            max_message_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            subscribe_rate: 20,
            connection_init_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
        }
    }
}

/// Bounds on one GraphQL document (subscriptions and `POST /graphql`); a document over any
/// of them is refused with a `LIMIT_EXCEEDED` GraphQL error before it is planned.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// Size of the query text in bytes.
    pub max_document_bytes: usize,
    /// Nesting of fields; root fields are at depth 1.
    pub max_depth: usize,
    /// Fields after fragment expansion (aliased and `@skip`ped ones included).
    pub max_fields: usize,
    /// Aliased fields after fragment expansion.
    pub max_aliases: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            max_document_bytes: 16 * 1024,
            max_depth: 8,
            max_fields: 100,
            max_aliases: 30,
        }
    }
}

/// Partner webhooks (DESIGN 1.5): the retry schedule, the HTTP client's limits and the
/// per-endpoint defaults. README, "Webhooks", explains each.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// CIDRs exempt from the SSRF guard (loopback, private, ... are refused otherwise).
    pub allow_networks: Vec<String>,
    /// When each attempt is due, counted from the previous one; the first is the immediate
    /// attempt. After the last, the delivery is failed (kept for manual retry).
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Each retry interval is moved by up to this fraction either way.
    pub jitter: f64,
    /// One attempt, connect to the end of the response body.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// An endpoint failing for this long without a success is disabled.
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    /// Default per endpoint: attempts in flight at once (on one node).
    pub max_in_flight: u32,
    /// Default per endpoint: attempts started per second (on one node); 0 = no limit.
    pub rate_limit_per_second: u32,
    /// How long a node holds a delivery it claimed before another node may take it.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    #[serde(deserialize_with = "duration")]
    pub retry_after_max: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let h = |hours: u64| Duration::from_secs(hours * 3600);
        WebhooksConfig {
            allow_networks: Vec::new(),
            retry_schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
                h(2),
                h(5),
                h(10),
                h(10),
            ],
            jitter: 0.2,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            disable_after: h(5 * 24),
            max_in_flight: 20,
            rate_limit_per_second: 0,
            lease: Duration::from_secs(60),
            retry_after_max: h(1),
        }
    }
}

/// The smallest `http.max_header_bytes`: room for a request line and ordinary headers.
pub const MIN_HEADER_BYTES: usize = 1024;

/// Durations are written the human way: `"30s"`, `"5m"`, `"250ms"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
        })
        .collect()
}

/// Command-line overrides, the last layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub redis_url: Option<String>,
}

impl Config {
    /// Builds the configuration from the four layers. `env` is the process environment (a
    /// parameter so tests can pass their own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> anyhow::Result<Config> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            table = text
                .parse::<toml::Table>()
                .with_context(|| format!("parsing config file {}", path.display()))?;
        }
        let mut extra_admin_key = None;
        for (name, value) in env {
            if name == "HERALD_ADMIN_KEY" {
                extra_admin_key = Some(value);
                continue;
            }
            let Some(path) = name.strip_prefix("HERALD_") else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(|k| k.is_empty()) {
                bail!("environment variable {name}: empty section or key");
            }
            set_path(&mut table, &keys, env_value(&value))
                .with_context(|| format!("environment variable {name}"))?;
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .context("invalid configuration")?;
        if let Some(key) = extra_admin_key.filter(|k| !k.is_empty()) {
            config.auth.admin_keys.push(key);
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(url) = &overrides.redis_url {
            config.engine.redis_url = url.clone();
            config.engine.kind = EngineKind::Redis;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let wf = &self.workflow;
        if !wf.allows(OrderStatus::Accepted, OrderStatus::Confirmed)
            || !wf.allows(OrderStatus::Accepted, OrderStatus::Rejected)
        {
            bail!(
                "workflow.transitions: `accepted` must allow `confirmed` and `rejected` (the worker's outcomes)"
            );
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
            ("http.header_read_timeout", http.header_read_timeout),
            ("http.body_read_timeout", http.body_read_timeout),
            (
                "push.connection_init_timeout",
                self.push.connection_init_timeout,
            ),
            ("push.keepalive_interval", self.push.keepalive_interval),
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
        crate::webhooks::ssrf::AllowList::parse(&self.webhooks.allow_networks)
            .map_err(|e| anyhow::anyhow!(e))?;
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
        let jwt = &self.auth.jwt;
        if !jwt.hs256_secret.is_empty()
            && jwt.hs256_secret.len() < crate::auth::MIN_HS256_SECRET_BYTES
        {
            bail!(
                "auth.jwt.hs256_secret must be at least {} bytes",
                crate::auth::MIN_HS256_SECRET_BYTES
            );
        }
        if !jwt.rs256_public_key_pem.is_empty() {
            crate::auth::rs256_public_key(&jwt.rs256_public_key_pem)?;
        }
        Ok(())
    }
}

/// An environment value is read as a TOML value when it is one (`3`, `true`, `["a","b"]`),
/// and as a plain string otherwise (`redis://...`, `30s`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, sections) = keys.split_last().context("empty key")?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("`{section}` is not a section"),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.engine.kind, EngineKind::Memory);
        assert_eq!(c.engine.events_stream_key(), "herald:{p0}:events");
        assert_eq!(c.queue.visibility_timeout, Duration::from_secs(30));
        assert!(c.auth.admin_keys.is_empty());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "listen = \"127.0.0.1:9000\"\n[queue]\nvisibility_timeout = \"5s\"\nmax_receives = 3\n[engine]\nkey_prefix = \"file:\""
        )
        .unwrap();
        let c = Config::load(
            Some(f.path()),
            env(&[
                ("HERALD_QUEUE__MAX_RECEIVES", "7"),
                ("HERALD_ENGINE__KEY_PREFIX", "env:"),
                ("HERALD_ADMIN_KEY", "admin-key-from-env-0001"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                redis_url: Some("redis://127.0.0.1:7000".into()),
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.queue.visibility_timeout, Duration::from_secs(5));
        assert_eq!(c.queue.max_receives, 7);
        assert_eq!(c.engine.key_prefix, "env:");
        assert_eq!(c.engine.kind, EngineKind::Redis);
        assert_eq!(c.engine.redis_url, "redis://127.0.0.1:7000");
        assert_eq!(c.auth.admin_keys, vec!["admin-key-from-env-0001"]);
    }

    #[test]
    fn env_lists_parse_as_toml() {
        let c = Config::load(
            None,
            env(&[("HERALD_WORKFLOW__CURRENCIES", r#"["USD","NOK"]"#)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.workflow.currencies, vec!["USD", "NOK"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = Config::load(
            None,
            env(&[("HERALD_QUEUE__VISIBILITY", "5s")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("visibility"), "{err:#}");
        let err = Config::load(
            None,
            env(&[("HERALD_QUEUE__VISIBILITY_TIMEOUT", "soon")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("soon"), "{err:#}");
    }

    #[test]
    fn documented_config_file_states_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/herald.toml");
        let documented = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            format!("{documented:?}"),
            format!("{:?}", Config::default()),
            "config/herald.toml and the built-in defaults disagree"
        );
    }

    #[test]
    fn webhook_schedule_parses_human_durations_and_bad_values_are_refused() {
        let c = Config::load(
            None,
            env(&[("HERALD_WEBHOOKS__RETRY_SCHEDULE", r#"["0s","200ms","1m"]"#)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.webhooks.retry_schedule,
            vec![
                Duration::ZERO,
                Duration::from_millis(200),
                Duration::from_secs(60)
            ]
        );
        assert_eq!(c.webhooks.disable_after, Duration::from_secs(5 * 24 * 3600));
        for (key, value) in [
            ("HERALD_WEBHOOKS__RETRY_SCHEDULE", "[]"),
            ("HERALD_WEBHOOKS__JITTER", "1.5"),
            ("HERALD_WEBHOOKS__MAX_IN_FLIGHT", "0"),
            ("HERALD_WEBHOOKS__LEASE", "1s"),
        ] {
            assert!(
                Config::load(None, env(&[(key, value)]), &Overrides::default()).is_err(),
                "{key}={value}"
            );
        }
    }

    #[test]
    fn rate_limits_default_on_for_partners_and_customers_and_a_zero_burst_is_refused() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.http.rate_limit_per_second, 1000);
        assert_eq!(c.http.rate_limit_burst, 2000);
        assert!(!c.http.rate_limit_admin);
        let err = Config::load(
            None,
            env(&[("HERALD_HTTP__RATE_LIMIT_BURST", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("rate_limit_burst"), "{err:#}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[[auth.partner_keys]]\nkey = \"partner-key-0000000001\"\npartner_id = \"p\"\nrate_limit_per_second = 5"
        )
        .unwrap();
        let c = Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.auth.partner_keys[0].rate_limit_per_second, Some(5));
        assert_eq!(c.auth.partner_keys[0].rate_limit_burst, None);
    }

    #[test]
    fn http_and_graphql_limits_parse_and_bad_ones_are_refused() {
        let c = Config::load(
            None,
            env(&[
                ("HERALD_HTTP__HEADER_READ_TIMEOUT", "2s"),
                ("HERALD_HTTP__MAX_HEADER_BYTES", "8192"),
                ("HERALD_GRAPHQL__MAX_ALIASES", "0"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.http.max_header_bytes, 8192);
        assert_eq!(c.graphql.max_aliases, 0);
        for (key, value, named) in [
            (
                "HERALD_HTTP__MAX_HEADER_BYTES",
                "100",
                "http.max_header_bytes",
            ),
            (
                "HERALD_HTTP__BODY_READ_TIMEOUT",
                "0s",
                "http.body_read_timeout",
            ),
            ("HERALD_GRAPHQL__MAX_FIELDS", "0", "graphql.max_fields"),
            ("HERALD_HTTP__MAX_JSON_DEPTH", "0", "http.max_json_depth"),
            ("HERALD_HTTP__MAX_JSON_DEPTH", "129", "http.max_json_depth"),
            ("HERALD_GRAPHQL__MAX_DEPTH", "-1", "graphql.max_depth"),
            (
                "HERALD_PUSH__OUTBOUND_QUEUE_BYTES",
                "0",
                "push.outbound_queue_bytes",
            ),
            (
                "HERALD_WEBHOOKS__ALLOW_NETWORKS",
                r#"["10.0.0.0/40"]"#,
                "webhooks.allow_networks",
            ),
        ] {
            let err =
                Config::load(None, env(&[(key, value)]), &Overrides::default()).expect_err(key);
            assert!(format!("{err:#}").contains(named), "{key}: {err:#}");
        }
    }

    #[test]
    fn short_api_keys_are_refused() {
        let err = Config::load(
            None,
            env(&[("HERALD_ADMIN_KEY", "short")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("16 characters"));
    }

    fn jwt_env(key: &str, value: &str) -> anyhow::Result<Config> {
        Config::load(
            None,
            env(&[(&format!("HERALD_AUTH__JWT__{key}"), value)]),
            &Overrides::default(),
        )
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let err = jwt_env("HS256_SECRET", "only-31-bytes-long-secret-xxxxx").unwrap_err();
        assert!(format!("{err:#}").contains("at least 32 bytes"), "{err:#}");
        assert!(!format!("{err:#}").contains("only-31"), "{err:#}");
        assert!(jwt_env("HS256_SECRET", "exactly-32-bytes-long-secret-xyz").is_ok());
    }

    #[test]
    fn unparsable_rs256_public_keys_are_refused() {
        let err = jwt_env("RS256_PUBLIC_KEY_PEM", "not a pem").unwrap_err();
        assert!(
            format!("{err:#}").contains("rs256_public_key_pem"),
            "{err:#}"
        );
        let garbage = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n";
        assert!(jwt_env("RS256_PUBLIC_KEY_PEM", garbage).is_err());
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt_rs256_public.pem");
        let pem = std::fs::read_to_string(path).unwrap();
        assert!(jwt_env("RS256_PUBLIC_KEY_PEM", &pem).is_ok());
    }
}
