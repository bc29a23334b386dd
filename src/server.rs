//! `herald serve`: opens the engine, starts the roles this process runs and shuts them down in
//! order. Shutdown is designed, not bolted on: on SIGTERM/SIGINT intake stops first (the HTTP
//! server stops accepting and finishes its requests), then the worker finishes the batches in
//! flight and releases the commands it had not started, then the event tail, the webhook
//! dispatcher and the webhook sender stop (attempts in flight finish), all within
//! `http.shutdown_grace`.

use crate::api;
use crate::auth::{KeyRing, generate_admin_key};
use crate::config::Config;
use crate::engine;
use crate::graphql::{DocumentLimits, GraphqlSchema};
use crate::http::ratelimit::ApiRateLimiter;
use crate::longpoll::LongPolls;
use crate::metrics::Metrics;
use crate::node::{Node, Shared};
use crate::push::{self, PushState};
use crate::tail::{EventSink, EventTail};
use crate::webhooks::dispatcher::Dispatcher;
use crate::webhooks::sender::{DeliveryBodies, Sender};
use crate::webhooks::ssrf::{self, AllowList};
use crate::worker::Worker;
use anyhow::{Context, bail};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The roles one process runs; any subset, so roles can be spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub push: bool,
    pub webhooks: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        push: true,
        webhooks: true,
    };
    const NONE: Roles = Roles {
        api: false,
        worker: false,
        push: false,
        webhooks: false,
    };
}

impl FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut roles = Roles::NONE;
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "all" => roles = Roles::ALL,
                "api" => roles.api = true,
                "worker" => roles.worker = true,
                "push" => roles.push = true,
                "webhooks" => roles.webhooks = true,
                other => {
                    return Err(format!(
                        "unknown role `{other}` (roles: api, worker, push, webhooks, all)"
                    ));
                }
            }
        }
        if roles == Roles::NONE {
            return Err("no role given".into());
        }
        Ok(roles)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.api, "api"),
            (self.worker, "worker"),
            (self.push, "push"),
            (self.webhooks, "webhooks"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// Every (method, path) a node with these roles serves: the API's routes and the push
/// role's. The security suite holds a test case for each.
pub fn route_table(roles: Roles) -> Vec<(axum::http::Method, &'static str)> {
    let mut table = api::routes(roles.api).table().to_vec();
    if roles.push {
        table.extend_from_slice(push::routes().table());
    }
    table
}

pub async fn serve(mut config: Config, roles: Roles) -> anyhow::Result<()> {
    if config.auth.admin_keys.is_empty() {
        let key = generate_admin_key();
        // Printed once on stdout, on purpose: nothing is open by default, and the operator of
        // a fresh start needs this key. It never goes to the log.
        println!("herald: no admin key configured; generated one for this run:");
        println!("herald:   admin key: {key}");
        println!("herald:   (set HERALD_ADMIN_KEY or [auth] admin_keys to choose your own)");
        config.auth.admin_keys.push(key);
    }
    let consumer = format!(
        "herald-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let engine = engine::open(&config, consumer.clone())
        .await
        .with_context(|| format!("opening the {:?} engine", config.engine.kind))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let grace = config.http.shutdown_grace;

    // Checked by Config::validate already; parsed here for use.
    let webhook_allow = Arc::new(
        AllowList::parse(&config.webhooks.allow_networks).map_err(|e| anyhow::anyhow!(e))?,
    );
    let webhook_wake = Arc::new(Notify::new());
    let long_polls = Arc::new(LongPolls::new(
        &config.http,
        metrics.clone(),
        shutdown.clone(),
    ));
    let token_key = if config.workflow.task_token_secret.is_empty() {
        // Validation refuses an empty secret where tokens must outlive the process (Redis
        // with a callback step); here they live as long as the memory engine's orders.
        crate::workflow::token::TokenKey::random()
    } else {
        crate::workflow::token::TokenKey::new(config.workflow.task_token_secret.as_bytes())
    };
    let workflow = Arc::new(
        crate::workflow::Workflow::new(config.workflow.clone(), token_key)
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    let workflow_timers = Arc::new(Notify::new());
    let state = Node(Arc::new(Shared {
        engine: engine.clone(),
        workflow: workflow.clone(),
        workflow_timers: workflow_timers.clone(),
        keys: KeyRing::from_config(&config.auth).context("loading [auth] keys")?,
        rate_limiter: ApiRateLimiter::new(&config.http, std::time::Instant::now()),
        config: config.clone(),
        metrics: metrics.clone(),
        webhook_allow: webhook_allow.clone(),
        webhook_wake: webhook_wake.clone(),
        long_polls: long_polls.clone(),
    }));
    if state.keys.is_empty() {
        bail!("no API key configured");
    }

    let mut background = tokio::task::JoinSet::new();
    // WebSocket connections close on their own token (with 1012) when shutdown starts.
    let push_shutdown = CancellationToken::new();
    let mut push_state = None;
    if roles.api {
        // The one blocking reader behind every long-poll of this node (only while one waits).
        background.spawn(long_polls.watch(engine.clone()));
    }
    if roles.worker {
        let timers = workflow_timers.clone();
        let worker = Worker::new(
            engine.clone(),
            workflow.clone(),
            config.worker.clone(),
            config.queue.visibility_timeout,
            metrics.clone(),
            timers.clone(),
        )?;
        background.spawn(worker.run(shutdown.clone()));
        background.spawn(crate::worker::timers::run(
            engine.clone(),
            metrics.clone(),
            timers,
            shutdown.clone(),
        ));
    }
    if roles.webhooks {
        let client = ssrf::client(
            (*webhook_allow).clone(),
            config.webhooks.connect_timeout,
            config.webhooks.request_timeout,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        // The bodies of the deliveries this node's dispatchers create, kept for its sender.
        let bodies = Arc::new(DeliveryBodies::default());
        // Each its own consumer of the dispatch group (a second node's would be the same); the
        // first leads, the others help only while it is behind.
        let load = Arc::new(crate::webhooks::dispatcher::DispatchLoad::default());
        for i in 0..config.webhooks.dispatchers {
            let dispatcher = Dispatcher::new(
                engine.clone(),
                metrics.clone(),
                if i == 0 {
                    consumer.clone()
                } else {
                    format!("{consumer}-d{i}")
                },
                config.webhooks.lease,
                webhook_wake.clone(),
                bodies.clone(),
                config.webhooks.dispatch_linger,
            )
            .sharing(load.clone(), i == 0);
            background.spawn(dispatcher.run(shutdown.clone()));
        }
        let sender = Sender::new(
            engine.clone(),
            config.webhooks.clone(),
            webhook_allow.clone(),
            client,
            metrics.clone(),
            webhook_wake.clone(),
            bodies,
        );
        background.spawn(sender.run(shutdown.clone()));
        let sweep = crate::webhooks::retention::RetentionSweep::new(
            engine.clone(),
            config.webhooks.delivery_retention,
            config.webhooks.delivery_sweep_interval,
        );
        background.spawn(sweep.run(shutdown.clone()));
    }
    if roles.push {
        let schema =
            GraphqlSchema::load().map_err(|e| anyhow::anyhow!("config/schema.graphql: {e}"))?;
        let hub = Arc::new(push::hub::Hub::new());
        let push = Arc::new(PushState {
            node: state.clone(),
            hub: hub.clone(),
            schema: Arc::new(schema),
            limits: DocumentLimits::from(&config.graphql),
            connections: Default::default(),
            metrics: Default::default(),
            shutdown: push_shutdown.clone(),
            // Validation refuses an empty secret with the redis engine (nodes accept each
            // other's tokens); the memory engine is one process.
            stream_tokens: if config.push.stream_token_secret.is_empty() {
                crate::auth::StreamTokenKey::random()
            } else {
                crate::auth::StreamTokenKey::new(config.push.stream_token_secret.as_bytes())
            },
        });
        let weak = Arc::downgrade(&push);
        let _ = metrics.extra.set(Box::new(move |scrape| {
            if let Some(push) = weak.upgrade() {
                push.metric_series(scrape);
            }
        }));
        let sinks: Vec<Arc<dyn EventSink>> = vec![hub];
        let tail = Arc::new(EventTail::new(
            engine.clone(),
            metrics.clone(),
            sinks,
            config.engine.event_retention,
        ));
        background.spawn(tail.run(shutdown.clone()));
        push_state = Some(push);
    }

    let mut router = api::router(state, roles.api);
    if let Some(push) = &push_state {
        router = router.merge(push::router(push.clone()));
    }
    println!(
        "herald {}: listening on http://{addr} (engine: {}, roles: {roles}, consumer: {consumer})",
        env!("CARGO_PKG_VERSION"),
        engine.kind()
    );
    if roles.push {
        println!("herald:   console: http://{addr}/");
        println!(
            "herald:   graphql: ws://{addr}/graphql (graphql-transport-ws, graphql-ws/AppSync)"
        );
        println!(
            "herald:   sse:     GET  http://{addr}/v1/events/stream  http://{addr}/v1/orders/{{orderId}}/events"
        );
    }
    if roles.api {
        println!("herald:   intake:  POST http://{addr}/v1/orders");
        println!("herald:   status:  GET  http://{addr}/v1/orders/{{orderId}}/status");
        println!("herald:   events:  GET  http://{addr}/v1/events?after=$&waitMs=25000");
        println!("herald:   webhooks: POST http://{addr}/v1/webhooks");
    }
    println!(
        "herald:   health:  GET  http://{addr}/healthz  http://{addr}/readyz  http://{addr}/metrics"
    );
    tracing::info!(%addr, engine = engine.kind(), %roles, "herald started");
    // Apart, so a slow answer never delays serving; `GET /readyz` reports the same.
    let asked = Arc::clone(&engine);
    tokio::spawn(async move {
        let persistence = asked.persistence().await;
        match persistence.warning() {
            Some(warning) => tracing::warn!(persistence = persistence.name(), "{warning}"),
            None => tracing::info!(persistence = persistence.name(), "engine persistence"),
        }
    });

    let server_shutdown = shutdown.clone();
    let http = config.http.clone();
    let mut server =
        tokio::spawn(
            async move { crate::http::serve(listener, router, &http, server_shutdown).await },
        );

    tokio::select! {
        _ = shutdown_signal() => {}
        result = &mut server => {
            result.context("HTTP server task")?;
            bail!("HTTP server stopped unexpectedly");
        }
    }
    tracing::info!(grace = ?grace, "shutting down: intake stops, in-flight work finishes");
    // Subscribers are told to reconnect (1012) first: upgraded connections are not part of
    // the HTTP server's graceful drain.
    push_shutdown.cancel();
    shutdown.cancel();
    let drained = tokio::time::timeout(grace, async {
        let _ = server.await;
        while background.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown grace period over; unfinished commands return after their visibility timeout"
        );
    }
    tracing::info!("herald stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops herald");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_any_subset() {
        let r: Roles = "api,push".parse().unwrap();
        assert!(r.api && r.push && !r.worker && !r.webhooks);
        let w: Roles = "webhooks".parse().unwrap();
        assert!(w.webhooks && !w.api);
        assert!("all".parse::<Roles>().unwrap().webhooks);
        assert_eq!(Roles::ALL.to_string(), "api,worker,push,webhooks");
        assert_eq!("all".parse::<Roles>().unwrap(), Roles::ALL);
        assert!("api,bogus".parse::<Roles>().is_err());
        assert!("".parse::<Roles>().is_err());
        assert_eq!(r.to_string(), "api,push");
    }

    #[test]
    fn the_route_table_lists_each_role_s_routes_once() {
        use axum::http::Method;
        let all = route_table(Roles::ALL);
        assert!(all.contains(&(Method::PATCH, "/v1/webhooks/{webhook_id}")));
        assert!(all.contains(&(Method::POST, "/graphql")));
        let mut unique = all.clone();
        unique.sort_by_key(|(m, p)| (m.to_string(), *p));
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        let worker = route_table("worker".parse().unwrap());
        assert_eq!(worker.len(), 3, "health, readiness, metrics: {worker:?}");
    }
}
