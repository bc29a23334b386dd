//! The layering: built-in defaults < `--config FILE` < environment `HERALD_<SECTION>__<KEY>`
//! < command-line flags. It owns where a value comes from and which layer wins, never whether
//! the value is acceptable (that is `validate`, run on the result).

use super::{Config, EngineKind};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::Path;

/// Command-line overrides, the last layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub redis_url: Option<String>,
}

/// The four layers merged into one configuration, not yet validated.
pub(super) fn layered(
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
    Ok(config)
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
