//! The service a workflow task step calls in the `workflow` scenario: a minimal hyper server
//! (HTTP/1.1 keep-alive, the stack Herald's own intake runs on) that answers every `POST` at
//! once with `200 {"approved": true}` and counts the calls. It does no work of its own, so what
//! the scenario measures is Herald's cost of a step (the command, the call, the decision, the
//! write), not a service's. Anything but a `POST` gets `405`, so a step pointed at it with the
//! wrong method shows as the step's failures, not as speed.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// The answer to every call: the step's choice `body.approved == true` holds on it.
pub const APPROVED: &str = r#"{"approved":true}"#;

/// What the service has seen; shared with the scenario.
#[derive(Default)]
pub struct Calls {
    approved: AtomicU64,
    refused: AtomicU64,
}

impl Calls {
    /// `POST`s answered 200.
    pub fn approved(&self) -> u64 {
        self.approved.load(Ordering::Relaxed)
    }

    /// Other requests, answered 405.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Binds `listen` and serves until the process ends; returns the bound address and the
/// counters.
pub async fn start(listen: &str) -> anyhow::Result<(SocketAddr, Arc<Calls>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the task service on {listen}"))?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(Calls::default());
    tokio::spawn(serve(listener, calls.clone()));
    Ok((addr, calls))
}

async fn serve(listener: TcpListener, calls: Arc<Calls>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                eprintln!("task service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(tcp),
                    service_fn(move |req| {
                        let calls = calls.clone();
                        async move { Ok::<_, Infallible>(handle(req, &calls).await) }
                    }),
                )
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, calls: &Calls) -> Response<Full<Bytes>> {
    let post = req.method() == Method::POST;
    // Read the whole body so the connection can carry the next call.
    let _ = req.into_body().collect().await;
    let (status, body) = if post {
        calls.approved.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, APPROVED)
    } else {
        calls.refused.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"title":"Method not allowed"}"#,
        )
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_post_is_approved_and_counted_and_anything_else_refused() {
        let (addr, calls) = start("127.0.0.1:0").await.expect("bind");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let url = format!("http://{addr}/approve/lt-1-7");
        let resp = client
            .post(&url)
            .body(r#"{"orderId":"lt-1-7"}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["approved"], true);
        let resp = client.get(&url).send().await.expect("get");
        assert_eq!(resp.status().as_u16(), 405);
        assert_eq!((calls.approved(), calls.refused()), (1, 1));
    }
}
