//! The real checks config validation borrows from `auth` and the SSRF guard, and
//! `Config::load`, which uses them. It lives outside `config/` so that `config` stays a leaf
//! (`auth` and `webhooks` import it; it imports neither), and it is the only place that knows
//! both sides. It must hold no rule of its own: each check is the owning module's function.

use crate::config::{Checks, Config, Overrides};
use std::path::Path;

/// What `Config::load` validates with: the same parsers the server runs at start-up, so a
/// configuration that loads is one the server can use.
pub const CHECKS: Checks = Checks {
    allow_networks: |cidrs| crate::webhooks::ssrf::AllowList::parse(cidrs).map(drop),
    hs256_min_bytes: crate::auth::MIN_HS256_SECRET_BYTES,
    rs256_key: |pem| crate::auth::rs256_public_key(pem).map(drop),
    choice: |when| crate::workflow::expr::Expr::parse(when).map(drop),
};

impl Config {
    /// Builds the configuration from the four layers (`crate::config` explains them) and
    /// validates it. `env` is the process environment (a parameter so tests can pass their
    /// own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> anyhow::Result<Config> {
        Config::load_with(file, env, overrides, &CHECKS)
    }
}
