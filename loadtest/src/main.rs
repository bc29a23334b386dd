//! `herald-loadtest`: load generator for Herald. One subcommand per scenario; each prints a
//! table of throughput and latency percentiles (HDR histograms) and can write JSON.

mod e2e;
mod fanout;
mod feed;
mod idle;
mod intake;
mod intake_reference;
mod plot;
mod procs;
mod prom;
mod publish;
mod rate;
mod reference;
mod report;
mod signing;
mod sink;
mod stats;
mod sys;
mod task_service;
mod webhooks;
mod workflow;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "herald-loadtest", version, about)]
struct Cli {
    /// Worker threads for the async runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Order intake: POST /v1/orders, closed or open loop
    ///
    /// Sends orders as fast as N clients can (closed loop, --clients) or on a fixed schedule
    /// (open loop, --rate; latency from each order's scheduled time), and optionally measures
    /// accept -> confirmed latency from the event feed (--confirm-latency).
    Intake(intake::IntakeArgs),

    /// The reference Herald's intake is compared with: a minimal hyper server answering 202 to
    /// `POST /v1/orders` (no auth, no storage). Prints `listening on http://ADDR`.
    IntakeReference(intake_reference::IntakeReferenceArgs),

    /// WebSocket fan-out: N subscribers, events published into the server, publish -> receive
    /// latency and deliveries/s
    ///
    /// Events go into Herald's Redis stream (--target herald) or to the reference server
    /// (--target reference); --mode broadcast (everyone gets every event) or targeted (one
    /// order per connection); --rate R (open loop) or max (closed loop).
    Fanout(fanout::FanoutArgs),

    /// The reference broadcast server Herald's fan-out is compared with (no GraphQL, no
    /// Redis; pre-serialised frames). Prints `listening on ws://ADDR`.
    Reference(reference::ReferenceArgs),

    /// Server memory per idle subscribed connection (VmRSS of --pid before and after)
    Idle(idle::IdleArgs),

    /// Webhook deliveries to a built-in sink that verifies every signature: deliveries/s and
    /// publish -> receive latency, or retry lateness
    ///
    /// The sink (HTTP/1.1 keep-alive on loopback) is registered at Herald with the admin key;
    /// events go into Herald's Redis stream. `--mode throughput` (--rate R or max) or
    /// `--mode lateness` (every first attempt answered 500; how late each retry arrives).
    /// `--target reference`: the load tool posts signed bodies to the sink itself, the ceiling.
    Webhooks(webhooks::WebhooksArgs),

    /// End to end: orders in over HTTP at a rate, notifications out over WebSocket and
    /// webhooks; send -> notified latency on both paths, and what went missing
    ///
    /// Orders (`POST /v1/orders`, open loop at --rate, latency from each order's scheduled send
    /// time) are spread over --subscribers customers, each watched by one WebSocket subscriber
    /// (graphql-transport-ws or --protocol appsync); --endpoints webhook endpoints, registered
    /// with the admin key, point at built-in sinks that verify every signature. Per path:
    /// scheduled send -> `order.confirmed` and 202 -> `order.accepted` latency; expected,
    /// received, missing (not in within --drain of the last send) and duplicate notifications.
    /// Herald must allow loopback webhooks: `[webhooks] allow_networks = ["127.0.0.0/8"]`.
    E2e(e2e::E2eArgs),

    /// Workflow steps (issue 13): orders confirmed per second through a task step, or how late
    /// a burst of timers due at once moves its orders
    ///
    /// `--mode throughput`: --clients orders in the workflow at once, each client sending its
    /// next order when the event feed shows the last one confirmed; with --service-listen the
    /// tool also runs the service the task step calls (200 {"approved": true} at once).
    /// Run against Herald with the step and without steps, same build and engine, for the ratio.
    /// `--mode lateness`: --orders orders all with `metadata.dueAt` the same instant --lead
    /// ahead, for a `wait` step `until = "order.metadata.dueAt"`; lateness = the status change's
    /// `occurredAt` (and its arrival on the feed) - dueAt, beside Herald's
    /// `herald_workflow_timer_lateness_seconds` read from /metrics.
    Workflow(workflow::WorkflowArgs),

    /// BENCHMARKS.md from the JSON results the scenario scripts wrote
    ///
    /// Tables, same-run ratios and the targets of the issues marked met or NOT met are
    /// computed from the numbers; the prose comes from loadtest/notes/; plots are copied into
    /// --plots and linked.
    Report(report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sys::raise_nofile_limit();

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;

    rt.block_on(async {
        match cli.scenario {
            Scenario::Intake(args) => intake::run(args).await,
            Scenario::IntakeReference(args) => intake_reference::run(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Reference(args) => reference::run(args).await,
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::Webhooks(args) => webhooks::run(args).await,
            Scenario::Report(args) => report::run(args).await,
            Scenario::E2e(args) => e2e::run(args).await,
            Scenario::Workflow(args) => workflow::run(args).await,
        }
    })
}
