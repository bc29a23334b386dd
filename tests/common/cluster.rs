//! A real Redis Cluster for tests: `masters` masters and `replicas_per_master` replicas each,
//! every node a `redis-server --cluster-enabled yes` on ephemeral loopback ports in one temp
//! dir, joined with `redis-cli --cluster create`. Nodes can be SIGKILLed and restarted from
//! their AOF and `nodes.conf`; the cluster dies with its value (or, for [`RedisCluster::shared`],
//! with the test process). Every wait here is bounded and panics with the nodes' logs.
#![allow(dead_code)]

use super::{redis_server_command, spawn_redis, wait_for_ping};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a node may be silent before the others mark it failed: short, so a failover in a
/// test takes seconds.
const NODE_TIMEOUT_MS: u64 = 2_000;
const START_LIMIT: Duration = Duration::from_secs(30);
const FAILOVER_LIMIT: Duration = Duration::from_secs(40);

/// Cluster ports come from below Linux's ephemeral range (32768 and up), where `free_port`
/// and every outgoing connection's source port live: a port picked there can be taken by
/// another test's server or a client socket before the node binds it. Each process starts at
/// its own offset and counts up, skipping ports something already listens on.
const PORT_FLOOR: u16 = 20_000;
const PORT_SPAN: u16 = 12_000;

fn cluster_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % u32::from(PORT_SPAN / 2)) as u16 * 2;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_FLOOR + (offset + n) % PORT_SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port, chosen explicitly: the default (`port + 10000`) overflows for
    /// ephemeral ports above 55535.
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    aof: bool,
    dir: tempfile::TempDir,
    /// Set for the shared cluster only: a shell that kills the nodes and removes the dir when
    /// this process exits (statics are never dropped), however it exits.
    reaper: Option<(Child, ChildStdin)>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok`. With `aof`, writes are fsynced before they are acknowledged.
    pub fn start(masters: usize, replicas_per_master: usize, aof: bool) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let count = masters * (1 + replicas_per_master);
        let nodes = (0..count)
            .map(|_| {
                let port = cluster_port();
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir(&node_dir).expect("node dir");
                ClusterNode {
                    port,
                    bus_port: cluster_port(),
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = RedisCluster {
            nodes,
            aof,
            dir,
            reaper: None,
        };
        for i in 0..count {
            cluster.spawn_node(i);
        }
        cluster.create(replicas_per_master);
        cluster.wait_ok(START_LIMIT);
        cluster
    }

    /// One 3-master cluster without replicas or AOF for the whole test binary, started on first
    /// use. Tests sharing it must keep to their own `key_prefix`; tests that kill or restart
    /// nodes start their own.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut cluster = RedisCluster::start(3, 0, false);
            cluster.arm_reaper();
            cluster
        })
    }

    /// Herald's `redis_url` for this cluster: every node, comma separated.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
    }

    /// A plain (not cluster-aware) connection to one node.
    pub fn node_conn(&self, i: usize) -> redis::Connection {
        redis::Client::open(self.node_url(i))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("connection to node {i}: {e}"))
    }

    fn spawn_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut cmd = redis_server_command(node.port, &node.dir);
        cmd.args(["--cluster-enabled", "yes"])
            .args([
                "--cluster-config-file",
                &format!("nodes-{}.conf", node.port),
            ])
            .args(["--cluster-port", &node.bus_port.to_string()])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--logfile", "redis.log"]);
        let child = spawn_redis(cmd);
        let port = node.port;
        self.nodes[i].child = Some(child);
        if !wait_for_ping(port, Duration::from_secs(10)) {
            panic!("cluster node on port {port} did not start\n{}", self.logs());
        }
    }

    fn create(&self, replicas_per_master: usize) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("redis-cli must be on PATH");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let output = child.wait_with_output().expect("redis-cli output");
                    if !status.success() {
                        panic!(
                            "redis-cli --cluster create failed ({status}):\n{}{}\n{}",
                            String::from_utf8_lossy(&output.stdout),
                            String::from_utf8_lossy(&output.stderr),
                            self.logs()
                        );
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-cli --cluster create did not finish\n{}", self.logs());
                }
            }
        }
    }

    fn info(&self, i: usize) -> Option<String> {
        let mut conn = redis::Client::open(self.node_url(i))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let cluster: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .ok()?;
        Some(format!("{cluster}{replication}"))
    }

    /// The node's cluster state is ok, it knows all `total` nodes and, if it is a replica,
    /// its link to its master is up (the initial sync is done).
    fn node_ready(info: &str, total: usize) -> bool {
        info.contains("cluster_state:ok")
            && info.contains(&format!("cluster_known_nodes:{total}\r"))
            && (!info.contains("role:slave") || info.contains("master_link_status:up"))
    }

    /// Waits until every running node reports `cluster_state:ok`, knows every node and, if a
    /// replica, has synced with its master.
    pub fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let total = self.nodes.len();
        loop {
            let all_ok = (0..total).filter(|&i| self.is_running(i)).all(|i| {
                self.info(i)
                    .is_some_and(|info| Self::node_ready(&info, total))
            });
            if all_ok {
                return;
            }
            if Instant::now() > deadline {
                let states: Vec<String> = (0..total)
                    .map(|i| format!("node {}: {:?}", self.nodes[i].port, self.info(i)))
                    .collect();
                panic!(
                    "cluster not ok within {limit:?}:\n{}\n{}",
                    states.join("\n"),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The hash slot of `key` (honouring hash tags), as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        let i = (0..self.nodes.len())
            .find(|&i| self.is_running(i))
            .expect("a running node");
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node_conn(i))
            .expect("CLUSTER KEYSLOT")
    }

    /// The node index serving `slot` as master, as running node `asking` sees it.
    fn master_of_slot_seen_by(&self, asking: usize, slot: u16) -> Option<usize> {
        let mut conn = redis::Client::open(self.node_url(asking))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).ok()?;
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (Some(start), Some(end), Some(master)) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let (redis::Value::Int(start), redis::Value::Int(end)) = (start, end) else {
                continue;
            };
            if (*start..=*end).contains(&i64::from(slot)) {
                let redis::Value::Array(addr) = master else {
                    return None;
                };
                let port = match addr.get(1) {
                    Some(redis::Value::Int(p)) => u16::try_from(*p).ok()?,
                    _ => return None,
                };
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// The node index serving `key`'s slot as master.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.slot_of(key);
        let asking = (0..self.nodes.len())
            .find(|&i| self.is_running(i))
            .expect("a running node");
        self.master_of_slot_seen_by(asking, slot)
            .unwrap_or_else(|| panic!("no master for slot {slot}\n{}", self.logs()))
    }

    /// Blocks until node `i` has acknowledged-to-replicas everything written to it so far
    /// (`WAIT`): Redis replicates asynchronously, so only writes a replica holds survive a
    /// failover.
    pub fn wait_replicated(&self, i: usize, replicas: usize) {
        let acked: usize = redis::cmd("WAIT")
            .arg(replicas)
            .arg(5_000)
            .query(&mut self.node_conn(i))
            .expect("WAIT");
        assert!(acked >= replicas, "only {acked} replicas acknowledged");
    }

    /// SIGKILL: the node dies at once, as in a crash.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and dir: it reloads its AOF (if any) and its
    /// `nodes.conf`, so it rejoins the cluster as the same node.
    pub fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        self.spawn_node(i);
        self.wait_ok(START_LIMIT);
    }

    /// After `dead` (a master) was killed: waits until another node serves `key`'s slot as
    /// master and every running node reports `cluster_state:ok`; returns the new master.
    pub fn wait_for_promotion(&self, dead: usize, key: &str) -> usize {
        let slot = self.slot_of(key);
        let deadline = Instant::now() + FAILOVER_LIMIT;
        loop {
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.is_running(i))
                .collect();
            let masters: Vec<Option<usize>> = running
                .iter()
                .map(|&i| self.master_of_slot_seen_by(i, slot))
                .collect();
            let agreed = masters
                .first()
                .copied()
                .flatten()
                .filter(|m| *m != dead && masters.iter().all(|x| *x == Some(*m)));
            let ok = running
                .iter()
                .all(|&i| self.info(i).is_some_and(|s| s.contains("cluster_state:ok")));
            if let Some(master) = agreed
                && ok
            {
                return master;
            }
            if Instant::now() > deadline {
                panic!(
                    "no replica promoted for slot {slot} within {FAILOVER_LIMIT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every node's log, for panic messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir.join("redis.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- node {} ---\n{tail}", n.port)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A shell reading from a pipe only this process holds: when the process exits, however,
    /// the pipe closes, and the shell kills the nodes and removes the dir.
    fn arm_reaper(&mut self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let script = format!(
            "trap '' INT TERM HUP; read _; kill -9 {} 2>/dev/null; rm -rf '{}'",
            pids.join(" "),
            self.dir.path().display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let stdin = child.stdin.take().expect("reaper stdin");
        self.reaper = Some((child, stdin));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if let Some((mut child, mut stdin)) = self.reaper.take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}
