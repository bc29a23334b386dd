//! Herald on a real Redis Cluster (three masters on ephemeral loopback ports, started by the
//! test): the pipeline flow end to end, and a master lost with nothing accepted lost.

mod common;

use common::cluster::RedisCluster;
use std::time::Duration;

#[test]
fn harness_cluster_promotes_a_replica_when_a_master_dies() {
    let mut cluster = RedisCluster::start(3, 1, true);
    let key = "herald:{p0}:probe";
    let master = cluster.master_of(key);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query(&mut cluster.node_conn(master))
        .expect("SET on the slot's master");
    cluster.wait_replicated(master, 1);
    cluster.kill_node(master);
    let promoted = cluster.wait_for_promotion(master, key);
    assert_ne!(promoted, master);
    let got: String = redis::cmd("GET")
        .arg(key)
        .query(&mut cluster.node_conn(promoted))
        .expect("GET on the promoted master");
    assert_eq!(got, "v");
    cluster.restart_node(master);
    cluster.wait_ok(Duration::from_secs(30));
}
