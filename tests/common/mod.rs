//! Test harness: real servers on ephemeral loopback ports. `RedisServer` starts its own
//! `redis-server` (never the shared one on 6379) and can stop, kill, pause and restart it;
//! `Herald` starts the real binary and reads the address it prints. Both die with the test.
#![allow(dead_code)]

pub mod cluster;
pub mod sink;
pub mod ws;

use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// `redis-server` on `port` (loopback only, no RDB snapshots) keeping its files in `dir`;
/// callers add the persistence and cluster flags they need.
pub fn redis_server_command(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

pub fn spawn_redis(mut cmd: Command) -> Child {
    cmd.spawn()
        .expect("redis-server must be on PATH (apt-get install redis-server)")
}

/// Whether the server on `port` answers PING within `limit`.
pub fn wait_for_ping(port: u16, limit: Duration) -> bool {
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1))
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    appendfsync: &'static str,
    child: Option<Child>,
}

impl RedisServer {
    /// A fresh redis-server; `aof` turns on the append-only file (`appendfsync always`, so a
    /// stop loses nothing).
    pub fn start(aof: bool) -> RedisServer {
        Self::start_fsync(aof, "always")
    }

    /// A fresh redis-server with the given `appendfsync` policy (`always`, `everysec`, `no`).
    pub fn start_fsync(aof: bool, appendfsync: &'static str) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            aof,
            appendfsync,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let mut cmd = redis_server_command(self.port, self.dir.path());
        cmd.args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", self.appendfsync]);
        self.child = Some(spawn_redis(cmd));
        if !wait_for_ping(self.port, Duration::from_secs(10)) {
            panic!("redis-server on port {} did not start", self.port);
        }
    }

    /// Stops the server (SIGTERM: with AOF, everything acknowledged is on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// SIGKILL: the process dies at once, as in a crash; the kernel keeps what Redis wrote to
    /// it (so with AOF, under either fsync policy, every acknowledged write survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server holds its connections and answers nothing until `resume`.
    pub fn pause(&self) {
        self.send_signal("STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.send_signal("CONT");
    }

    fn send_signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status();
        }
    }

    /// Starts it again on the same port and directory (so with AOF, with the same data).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connection to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const ADMIN_KEY: &str = "test-admin-key-000000000001";
pub const ACME_KEY: &str = "test-partner-key-acme-000001";
pub const GLOBEX_KEY: &str = "test-partner-key-globex-0001";

/// A running `herald serve`.
pub struct Herald {
    child: Option<Child>,
    pub base: String,
    pub output: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

pub struct HeraldOptions {
    pub redis_url: Option<String>,
    pub roles: String,
    /// Extra TOML appended to the test config.
    pub extra_toml: String,
    pub env: Vec<(String, String)>,
}

impl Default for HeraldOptions {
    fn default() -> Self {
        HeraldOptions {
            redis_url: None,
            roles: "all".into(),
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// The binary, without `HERALD_*` variables from the environment the tests run in (a
/// developer's own config): Herald reads every `HERALD_<KEY>` as configuration.
pub fn herald_command() -> Command {
    let mut cmd = Command::new(bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    // Required by the redis engine (nodes accept each other's stream tokens); the same for
    // every node a test starts.
    cmd.env("HERALD_PUSH__STREAM_TOKEN_SECRET", STREAM_TOKEN_SECRET);
    cmd
}

/// `push.stream_token_secret` of every Herald the tests start.
pub const STREAM_TOKEN_SECRET: &str = "test-stream-token-secret-0123456789abcdef";

impl Herald {
    pub fn start(options: HeraldOptions) -> Herald {
        use std::io::Write;
        let mut config = tempfile::NamedTempFile::new().expect("temp config");
        write!(
            config,
            r#"
[auth]
admin_keys = ["{ADMIN_KEY}"]
partner_keys = [
  {{ key = "{ACME_KEY}", partner_id = "acme" }},
  {{ key = "{GLOBEX_KEY}", partner_id = "globex" }},
]
{}
"#,
            options.extra_toml
        )
        .expect("write config");
        let mut cmd = herald_command();
        cmd.arg("serve")
            .arg("--config")
            .arg(config.path())
            .args(["--listen", "127.0.0.1:0", "--roles", &options.roles])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &options.redis_url {
            cmd.args(["--redis-url", url]);
            // `HERALD_TEST_PARTITIONS=N cargo test`: every Redis-backed Herald of the suite
            // with `engine.partitions = N` (a test's own setting wins).
            if let Ok(n) = std::env::var("HERALD_TEST_PARTITIONS")
                && !options.extra_toml.contains("partitions")
            {
                cmd.env("HERALD_ENGINE__PARTITIONS", n);
            }
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        Herald::spawn(cmd, config)
    }

    fn spawn(mut cmd: Command, config: tempfile::NamedTempFile) -> Herald {
        cmd.env_remove("HERALD_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start herald");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, is_stdout) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, true),
            (Box::new(stderr), false),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    // Recorded before the address is announced, so a test that starts after
                    // the announcement sees every line up to it.
                    output.lock().unwrap().push(line.clone());
                    if is_stdout && let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "herald did not start:\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
        };
        Herald {
            child: Some(child),
            base: format!("http://{addr}"),
            output,
            _config: config,
        }
    }

    /// `herald serve` with no config file at all (memory engine, generated admin key).
    pub fn start_bare(env: &[(&str, &str)]) -> Herald {
        let mut cmd = herald_command();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Herald::spawn(cmd, tempfile::NamedTempFile::new().expect("temp file"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.signal("TERM");
        match self.child.take() {
            Some(mut child) => child.wait().map(|s| s.success()).unwrap_or(false),
            None => false,
        }
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("http client")
}

pub fn order_body(order_id: &str, customer: &str) -> serde_json::Value {
    serde_json::json!({
        "orderId": order_id,
        "customerId": customer,
        "items": [{"sku": "sku-1", "quantity": 2, "unitPrice": 12.5}],
        "currency": "USD"
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Which engine a test runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Memory,
    Redis,
}

/// A Herald (and, on the Redis engine, its own redis-server) with an HTTP client.
pub struct Stack {
    pub herald: Herald,
    pub redis: Option<RedisServer>,
    pub http: reqwest::Client,
}

impl Stack {
    /// A stack over `herald`, a node of a Redis (or Cluster) someone else owns and stops:
    /// the second node of a multi-node test.
    pub fn joining(herald: Herald) -> Stack {
        Stack {
            herald,
            redis: None,
            http: client(),
        }
    }

    pub fn start(kind: Kind) -> Stack {
        Self::start_with(kind, "")
    }

    pub fn start_with(kind: Kind, extra_toml: &str) -> Stack {
        Self::start_with_env(kind, extra_toml, &[])
    }

    /// With more environment for Herald (e.g. `RUST_LOG`).
    pub fn start_with_env(kind: Kind, extra_toml: &str, env: &[(&str, &str)]) -> Stack {
        let redis = (kind == Kind::Redis).then(|| RedisServer::start(true));
        let herald = Herald::start(HeraldOptions {
            redis_url: redis.as_ref().map(|r| r.url()),
            extra_toml: extra_toml.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HeraldOptions::default()
        });
        Stack {
            herald,
            redis,
            http: client(),
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.herald.url(path))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .patch(self.herald.url(path))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.herald.url(path))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .expect("request")
    }

    pub async fn status(&self, order_id: &str) -> Option<Value> {
        let r = self
            .get(&format!("/v1/orders/{order_id}/status"), ADMIN_KEY)
            .await;
        if r.status() == StatusCode::OK {
            r.json().await.ok()
        } else {
            None
        }
    }

    pub async fn wait_for_status(&self, order_id: &str, status: &str, version: u64) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("order {order_id} {status} v{version}"),
            || async {
                self.status(order_id)
                    .await
                    .filter(|s| s["status"] == status && s["version"] == version)
            },
        )
        .await
    }

    pub async fn queue(&self) -> Value {
        self.get("/v1/admin/queues", ADMIN_KEY)
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn events(&self) -> Vec<Value> {
        let body: Value = self
            .get("/v1/events?after=0&limit=1000", ADMIN_KEY)
            .await
            .json()
            .await
            .unwrap();
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// Creates an order and waits until the worker has confirmed it.
    pub async fn order(&self, key: &str, order_id: &str, customer: &str) {
        let r = self
            .post("/v1/orders", key, &order_body(order_id, customer))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        self.wait_for_status(order_id, "confirmed", 2).await;
    }

    /// Appends an event with `POST /v1/events`; returns its eventId.
    pub async fn publish(&self, event: Value) -> String {
        let r = self.post("/v1/events", ADMIN_KEY, &event).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        r.json::<Value>().await.unwrap()["eventId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics", ADMIN_KEY).await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics"))
    }
}

/// Runs each named `async fn(Kind)` as one test per engine: `memory::name`, `redis::name`.
#[allow(unused_macros)]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Memory).await; } )*
        }
        mod redis {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Redis).await; } )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_engines;

// ---- customer tokens (JWT) ----

pub const JWT_SECRET: &str = "test-hs256-secret-0000000000000000000001";
pub const JWT_ISSUER: &str = "https://id.example";
pub const JWT_AUDIENCE: &str = "herald";

/// A file under `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// `[auth.jwt]` accepting the tokens minted below: HS256 with [`JWT_SECRET`] and RS256 with
/// the fixture key pair, issuer and audience required, no leeway (an expiry is exact).
pub fn jwt_toml() -> String {
    format!(
        "[auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\nrs256_public_key_pem = \"\"\"\n{}\"\"\"\nissuer = \"{JWT_ISSUER}\"\naudience = \"{JWT_AUDIENCE}\"\nleeway = \"0s\"\n",
        fixture("jwt_rs256_public.pem")
    )
}

/// Claims of a customer token valid for `expires_in` seconds (negative: expired).
pub fn customer_claims(customer: &str, expires_in: i64) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    serde_json::json!({"sub": customer, "exp": now + expires_in, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE})
}

pub fn hs256_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("HS256 token")
}

pub fn rs256_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(fixture("jwt_rs256_private.pem").as_bytes())
            .expect("fixture private key"),
    )
    .expect("RS256 token")
}

/// A valid HS256 customer token for `customer`, expiring in `ttl_secs`.
pub fn customer_token(customer: &str, ttl_secs: u64) -> String {
    hs256_token(&customer_claims(customer, ttl_secs as i64))
}

/// A valid HS256 token for `customer` of `partner` (the default `[auth.jwt] partner_claim`,
/// `partner_id`), expiring in `ttl_secs`.
pub fn partner_customer_token(customer: &str, partner: &str, ttl_secs: u64) -> String {
    let mut claims = customer_claims(customer, ttl_secs as i64);
    claims["partner_id"] = serde_json::json!(partner);
    hs256_token(&claims)
}

/// A process's resident memory (`VmRSS` in /proc), in KiB; `None` once it is gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Webhooks for tests: loopback sinks allowed (blocked by default), a short retry schedule.
pub const WEBHOOKS_TOML: &str = r#"
[webhooks]
allow_networks = ["127.0.0.0/8"]
retry_schedule = ["0s", "200ms", "400ms"]
jitter = 0.1
request_timeout = "1s"
connect_timeout = "500ms"
lease = "2s"
"#;
