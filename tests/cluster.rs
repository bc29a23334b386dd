//! Herald (the real binary) on a real Redis Cluster that each test starts on ephemeral
//! loopback ports: the pipeline flow end to end, and a master lost with nothing accepted lost.
//! With `partitions = 1` all of Herald's keys share the hash tag `{p0}`, so one master holds
//! them: the tests find it with `CLUSTER KEYSLOT`, never assume it.

mod common;

use common::cluster::RedisCluster;
use common::ws::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Starting a cluster waits for it in blocking calls: off the async test thread.
async fn cluster(masters: usize, replicas: usize) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(masters, replicas, true))
        .await
        .expect("cluster start")
}

fn stack_on(cluster: &RedisCluster) -> Stack {
    Stack {
        herald: Herald::start(HeraldOptions {
            redis_url: Some(cluster.url()),
            ..HeraldOptions::default()
        }),
        redis: None,
        http: client(),
    }
}

#[tokio::test]
async fn an_order_goes_through_the_pipeline_on_a_three_master_cluster() {
    let cluster = cluster(3, 0).await;
    let s = stack_on(&cluster);
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    // From the log's start, so the subscription sees every event whenever it is registered.
    send(
        &mut ws,
        sub(
            "1",
            "subscription { onOrderUpdated(orderId: \"cl-1\", after: \"0-0\") { orderId status version } }",
        ),
    )
    .await;

    s.order(ADMIN_KEY, "cl-1", "cust-1").await;
    let r = s
        .post(
            "/v1/orders/cl-1/transitions",
            ADMIN_KEY,
            &json!({"status": "preparing"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.wait_for_status("cl-1", "preparing", 3).await;

    let order: Value = s
        .get("/v1/orders/cl-1", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let history: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["accepted", "confirmed", "preparing"]);
    let events: Vec<(String, u64)> = s
        .events()
        .await
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap().to_string(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("accepted".into(), 1),
            ("confirmed".into(), 2),
            ("preparing".into(), 3)
        ]
    );
    for (status, version) in [("ACCEPTED", 1), ("CONFIRMED", 2), ("PREPARING", 3)] {
        let message = next(&mut ws).await;
        assert_eq!(message["id"], "1", "{message}");
        let e = &message["payload"]["data"]["onOrderUpdated"];
        assert_eq!(e["orderId"], "cl-1", "{message}");
        assert_eq!(e["status"], status, "{message}");
        assert_eq!(e["version"], version, "{message}");
    }
    // All of Herald's keys live on the one master that owns `{p0}`'s slot.
    let master = cluster.master_of("herald:{p0}:events");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("herald:*")
        .query(&mut cluster.node_conn(master))
        .unwrap();
    assert!(
        keys.iter().any(|k| k == "herald:{p0}:order:cl-1"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_killed_master_is_replaced_by_its_replica_and_nothing_accepted_is_lost() {
    let mut cluster = cluster(3, 1).await;
    let s = stack_on(&cluster);
    let ids: Vec<String> = (0..10).map(|i| format!("fo-{i}")).collect();
    for id in &ids {
        s.order(ADMIN_KEY, id, "cust-1").await;
    }
    let master = cluster.master_of("herald:{p0}:events");
    // Redis replicates asynchronously: a write a replica has not received is lost in a
    // failover, whatever the client. So the test waits until the replica holds everything
    // accepted so far, which is what an operator gets from `min-replicas-to-write` or WAIT.
    cluster.wait_replicated(master, 1);
    cluster.kill_node(master);
    let promoted = tokio::task::spawn_blocking(move || {
        let promoted = cluster.wait_for_promotion(master, "herald:{p0}:events");
        (cluster, promoted)
    })
    .await
    .expect("promotion");
    let (mut cluster, promoted) = promoted;
    assert_ne!(promoted, master);

    for id in &ids {
        s.wait_for_status(id, "confirmed", 2).await;
    }
    // Herald follows the new master: intake (retried through 503s while the client catches
    // up), the worker and the event log carry on.
    eventually(
        Duration::from_secs(30),
        "intake after the failover",
        || async {
            let r = s
                .post("/v1/orders", ADMIN_KEY, &order_body("fo-after", "cust-1"))
                .await;
            (r.status() == StatusCode::ACCEPTED).then_some(())
        },
    )
    .await;
    s.wait_for_status("fo-after", "confirmed", 2).await;
    let events = s.events().await;
    for id in ids.iter().map(String::as_str).chain(["fo-after"]) {
        let of_order: Vec<u64> = events
            .iter()
            .filter(|e| e["orderId"] == id)
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert_eq!(of_order, [1, 2], "events of {id}");
    }
    // The old master comes back from its AOF as a replica of the new one.
    tokio::task::spawn_blocking(move || cluster.restart_node(master))
        .await
        .expect("restart");
}
