//! The configuration's unit tests. They go through `Config::load`, the real wiring, so the
//! refusals that come from the auth and SSRF checks are covered with their real messages; the
//! last one gives `load_with` checks of its own, to show validation asks nothing else.

use super::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

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
            ("HERALD_PUSH__STREAM_TOKEN_SECRET", STREAM_SECRET),
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
    assert_eq!(c.webhooks.max_endpoints_per_partner, 20);
    assert_eq!(
        c.webhooks.delivery_retention,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(c.webhooks.delivery_sweep_interval, Duration::from_secs(60));
    for (key, value) in [
        ("HERALD_WEBHOOKS__RETRY_SCHEDULE", "[]"),
        ("HERALD_WEBHOOKS__JITTER", "1.5"),
        ("HERALD_WEBHOOKS__MAX_IN_FLIGHT", "0"),
        ("HERALD_WEBHOOKS__LEASE", "1s"),
        ("HERALD_WEBHOOKS__MAX_ENDPOINTS_PER_PARTNER", "0"),
        ("HERALD_WEBHOOKS__DELIVERY_RETENTION", "1d"),
        ("HERALD_WEBHOOKS__DELIVERY_SWEEP_INTERVAL", "10ms"),
    ] {
        assert!(
            Config::load(None, env(&[(key, value)]), &Overrides::default()).is_err(),
            "{key}={value}"
        );
    }
}

/// The retention sweep deletes records by age, pending or not: the retention must outlast the
/// schedule as the sender runs it, each wait with its jitter and doubled for a timeout or a
/// 429 (the default schedule's 27.6 h becomes about 66 h), not the schedule's plain sum.
#[test]
fn delivery_retention_outlasts_the_slowest_retry_schedule() {
    let load = |retention: &str| {
        Config::load(
            None,
            env(&[("HERALD_WEBHOOKS__DELIVERY_RETENTION", retention)]),
            &Overrides::default(),
        )
    };
    assert!(
        load("2d").is_err(),
        "2 days: retries of a timing-out endpoint run to ~66 h"
    );
    assert!(load("3d").is_ok());
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
            ("HERALD_HTTP__LONG_POLL_MAX_WAITING", "20"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(2));
    assert_eq!(c.http.max_header_bytes, 8192);
    assert_eq!(c.http.long_poll_max_waiting, 20);
    assert_eq!(c.http.long_poll_max_waiting_per_credential, 50);
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
        (
            "HERALD_HTTP__LONG_POLL_MAX_WAITING",
            "0",
            "http.long_poll_max_waiting",
        ),
        (
            "HERALD_HTTP__LONG_POLL_MAX_WAITING_PER_CREDENTIAL",
            "0",
            "http.long_poll_max_waiting_per_credential",
        ),
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
        let err = Config::load(None, env(&[(key, value)]), &Overrides::default()).expect_err(key);
        assert!(format!("{err:#}").contains(named), "{key}: {err:#}");
    }
}

#[test]
fn partitions_are_for_the_redis_engine_and_need_a_tagged_stream() {
    let load = |pairs: &[(&str, &str)]| {
        let mut pairs = pairs.to_vec();
        pairs.push(("HERALD_PUSH__STREAM_TOKEN_SECRET", STREAM_SECRET));
        Config::load(None, env(&pairs), &Overrides::default())
    };
    let redis = ("HERALD_ENGINE__KIND", "redis");
    let c = load(&[redis, ("HERALD_ENGINE__PARTITIONS", "16")]).unwrap();
    assert_eq!(c.engine.partitions, 16);
    assert_eq!(
        c.engine.partition_events_stream_key(5),
        "herald:{p5}:events"
    );
    for (pairs, expected) in [
        (
            vec![redis, ("HERALD_ENGINE__PARTITIONS", "0")],
            "between 1 and 1024",
        ),
        (
            vec![redis, ("HERALD_ENGINE__PARTITIONS", "1025")],
            "between 1 and 1024",
        ),
        (
            vec![("HERALD_ENGINE__PARTITIONS", "2")],
            "applies to the Redis engine only",
        ),
        (
            vec![
                redis,
                ("HERALD_ENGINE__PARTITIONS", "2"),
                ("HERALD_ENGINE__EVENTS_STREAM", "orders-log"),
            ],
            "has no `{p0}` hash tag",
        ),
    ] {
        let err = format!("{:#}", load(&pairs).unwrap_err());
        assert!(err.contains(expected), "{pairs:?}: {err}");
    }
    // One partition takes any stream name, as before.
    load(&[redis, ("HERALD_ENGINE__EVENTS_STREAM", "orders-log")]).unwrap();
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt_rs256_public.pem");
    let pem = std::fs::read_to_string(path).unwrap();
    assert!(jwt_env("RS256_PUBLIC_KEY_PEM", &pem).is_ok());
}

#[test]
fn partner_claim_defaults_to_partner_id_and_must_name_a_claim_of_its_own() {
    assert_eq!(
        jwt_env("LEEWAY", "30s").unwrap().auth.jwt.partner_claim,
        "partner_id"
    );
    assert_eq!(
        jwt_env("PARTNER_CLAIM", "tid")
            .unwrap()
            .auth
            .jwt
            .partner_claim,
        "tid"
    );
    for refused in ["", "sub", "exp", "iss"] {
        let err = jwt_env("PARTNER_CLAIM", refused).unwrap_err();
        assert!(
            format!("{err:#}").contains("auth.jwt.partner_claim"),
            "{refused}: {err:#}"
        );
    }
}

#[test]
fn validation_refuses_through_the_checks_it_is_given() {
    let refuse_all = Checks {
        allow_networks: |_| Err("webhooks.allow_networks: refused by the caller".into()),
        hs256_min_bytes: 64,
        rs256_key: |_| anyhow::bail!("auth.jwt.rs256_public_key_pem: refused by the caller"),
        choice: |_| Err("refused by the caller".into()),
    };
    let load = |pairs: &[(&str, &str)]| {
        Config::load_with(None, env(pairs), &Overrides::default(), &refuse_all)
    };
    let err = load(&[]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "webhooks.allow_networks: refused by the caller"
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[auth.jwt]\nhs256_secret = \"exactly-32-bytes-long-secret-xyz\""
    )
    .unwrap();
    let permissive = Checks {
        allow_networks: |_| Ok(()),
        ..refuse_all
    };
    let err = Config::load_with(Some(f.path()), env(&[]), &Overrides::default(), &permissive)
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "auth.jwt.hs256_secret must be at least 64 bytes"
    );
}

#[test]
fn the_example_workflow_loads_with_its_three_kinds_of_step() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/workflow-example.toml");
    let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
    let kinds: Vec<(crate::model::OrderStatus, StepKind)> = c
        .workflow
        .steps
        .iter()
        .map(|(s, step)| (*s, step.kind))
        .collect();
    use crate::model::OrderStatus::*;
    assert_eq!(
        kinds,
        [
            (Accepted, StepKind::Callback),
            (Confirmed, StepKind::Task),
            (Shipped, StepKind::Wait)
        ]
    );
    let warehouse = &c.workflow.steps[&Confirmed];
    assert_eq!(warehouse.retry[0].max_attempts, 3);
    assert_eq!(warehouse.retry[0].delay(2), Duration::from_secs(2));
    // A callback on Redis needs a shared token secret.
    let err = Config::load(
        Some(&path),
        env(&[
            ("HERALD_ENGINE__KIND", "redis"),
            ("HERALD_PUSH__STREAM_TOKEN_SECRET", STREAM_SECRET),
        ]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("task_token_secret"), "{err:#}");
}

const STREAM_SECRET: &str = "stream-token-secret-0123456789abcdef";

#[test]
fn the_redis_engine_needs_a_shared_stream_token_secret_of_32_bytes() {
    let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &Overrides::default());
    let redis = ("HERALD_ENGINE__KIND", "redis");
    let err = load(&[redis]).unwrap_err();
    assert!(
        format!("{err:#}").contains("push.stream_token_secret is required"),
        "{err:#}"
    );
    let err = load(&[redis, ("HERALD_PUSH__STREAM_TOKEN_SECRET", "short")]).unwrap_err();
    assert!(format!("{err:#}").contains("at least 32 bytes"), "{err:#}");
    let c = load(&[redis, ("HERALD_PUSH__STREAM_TOKEN_SECRET", STREAM_SECRET)]).unwrap();
    assert!(
        !format!("{c:?}").contains(STREAM_SECRET),
        "Debug hides the secret"
    );
    // The memory engine draws a key per process when none is set.
    assert!(load(&[]).is_ok());
}

#[test]
fn malformed_steps_are_refused_naming_the_key() {
    let refused = |toml: &str| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{toml}").unwrap();
        format!(
            "{:#}",
            Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap_err()
        )
    };
    let task = "[workflow.steps.confirmed]\ntype = \"task\"\ndefault = \"preparing\"\n[workflow.steps.confirmed.request]\nurl = \"http://127.0.0.1:1/\"\n";
    for (extra, expected) in [
        ("", "none"),
        (
            "[[workflow.steps.confirmed.choices]]\nwhen = \"status = 200\"\nnext = \"preparing\"\n",
            "workflow.steps.confirmed: choice `status = 200`",
        ),
        (
            "[[workflow.steps.confirmed.choices]]\nwhen = \"status == 200\"\nnext = \"delivered\"\n",
            "does not allow from `confirmed`",
        ),
        (
            "[[workflow.steps.confirmed.catch]]\nerrors = [\"boom\"]\nnext = \"cancelled\"\n",
            "unknown error class `boom`",
        ),
        (
            "[[workflow.steps.confirmed.retry]]\nerrors = [\"5xx\"]\nbackoff_rate = 0.5\n",
            "backoff_rate",
        ),
    ] {
        let toml = format!("{task}{extra}");
        if expected == "none" {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            writeln!(f, "{toml}").unwrap();
            Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap();
        } else {
            let err = refused(&toml);
            assert!(err.contains(expected), "{err}");
        }
    }
    let err = refused("[workflow.steps.shipped]\ntype = \"wait\"\nnext = \"delivered\"\n");
    assert!(err.contains("needs `after` or `until`"), "{err}");
    let err = refused("[workflow.steps.confirmed]\ntype = \"task\"\ndefault = \"preparing\"\n");
    assert!(err.contains("needs a `request`"), "{err}");
}
