//! A webhook sink: a real HTTP server on loopback that records every request and answers per
//! path. It can go away (stop accepting, close its idle keep-alive connections) and come back
//! on the same port with the same record.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub at: Instant,
    /// Wall-clock seconds at receipt (what a receiver checks `webhook-timestamp` against).
    pub unix: i64,
    /// The status code the sink answered.
    pub status: u16,
}

impl Received {
    pub fn id(&self) -> &str {
        self.headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or("")
    }
}

#[derive(Clone, Copy)]
pub enum Answer {
    Status(u16),
    Redirect,
    /// 200, after this long: keeps deliveries in flight (recorded on arrival, as ever).
    Slow(Duration),
}

#[derive(Clone, Default)]
pub struct SinkState {
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    /// Requests whose body contains one of these are answered 500, whatever their path.
    failing: Arc<Mutex<Vec<String>>>,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: SinkState,
    /// Present while the sink is up: the shutdown trigger and the server task.
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Sink {
    pub async fn start() -> Sink {
        let mut sink = Sink {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: SinkState::default(),
            running: None,
        };
        sink.listen().await;
        sink
    }

    async fn listen(&mut self) {
        let app = Router::new()
            .fallback(record)
            .with_state(self.state.clone());
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the sink");
        self.addr = listener.local_addr().expect("sink address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        self.running = Some((stop, task));
    }

    /// Goes away: the listener is closed (connecting is refused), idle keep-alive connections
    /// are closed and requests in flight finish.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Comes back on the same port, keeping what it received before.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "the sink is still up");
        self.listen().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer(&self, path: &str, answer: Answer) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(path.to_string(), answer);
    }

    /// Answers 500 to every request whose body contains `needle` until [`Self::heal`].
    pub fn fail_bodies_containing(&self, needle: &str) {
        self.state.failing.lock().unwrap().push(needle.to_string());
    }

    /// Stops failing the bodies containing `needle`.
    pub fn heal(&self, needle: &str) {
        self.state.failing.lock().unwrap().retain(|n| n != needle);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        super::eventually(
            Duration::from_secs(20),
            &format!("{n} requests on {path}"),
            || async {
                let got = self.received(path);
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

async fn record(State(state): State<SinkState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&body).into_owned();
    let failing = state
        .failing
        .lock()
        .unwrap()
        .iter()
        .any(|needle| body.contains(needle.as_str()));
    let answer = match failing {
        true => Some(Answer::Status(500)),
        false => state.answers.lock().unwrap().get(&path).copied(),
    };
    let status = match answer {
        None | Some(Answer::Slow(_)) => 200,
        Some(Answer::Status(code)) => code,
        Some(Answer::Redirect) => 302,
    };
    state.received.lock().unwrap().push(Received {
        path: path.clone(),
        headers: headers(&parts.headers),
        body,
        at: Instant::now(),
        unix,
        status,
    });
    match answer {
        None => (StatusCode::OK, "thanks").into_response(),
        Some(Answer::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "thanks").into_response()
        }
        Some(Answer::Status(code)) => (
            StatusCode::from_u16(code).unwrap(),
            format!("answer {code}"),
        )
            .into_response(),
        Some(Answer::Redirect) => (
            StatusCode::FOUND,
            [("location", "/redirect-target")],
            "moved",
        )
            .into_response(),
    }
}

fn headers(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// Verifies each (secret, request) with the reference `standardwebhooks` library
/// (tests/clients/verify_webhook.py, one Python process for the lot); returns its answers in
/// order: `ok` or `fail <reason>`.
pub fn verify(requests: &[(String, &Received)]) -> Vec<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/verify_webhook.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    {
        let mut stdin = child.stdin.take().expect("verify_webhook.py stdin");
        for (secret, r) in requests {
            let line = serde_json::json!({"secret": secret, "headers": r.headers, "body": r.body});
            writeln!(stdin, "{line}").expect("write to verify_webhook.py");
        }
    }
    let out = child.wait_with_output().expect("verify_webhook.py output");
    assert!(out.status.success(), "verify_webhook.py failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}
