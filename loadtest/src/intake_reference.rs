//! `herald-loadtest intake-reference`: a minimal hyper server answering `202` to
//! `POST /v1/orders`, the ceiling Herald's memory-engine intake is compared with in the same run
//! (issue 11: "shown beside a same-run minimal hyper server answering 202 to the same POST").
//!
//! It does the least any server answering that POST must do, and nothing of Herald's work
//! (no auth, no validation, no idempotency, no storage, no queue): HTTP/1.1 keep-alive on a
//! multi-threaded Tokio runtime (the same stack as Herald: hyper), reads the whole body, parses
//! it as JSON to take the `orderId` back, and answers `202` with a small JSON body naming it,
//! like Herald's answer. Anything else gets `404` (wrong path) or `400` (not JSON, no
//! `orderId`), so a load run against the wrong URL shows as errors, not as speed.

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct IntakeReferenceArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed as
    /// `listening on http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

pub async fn run(args: IntakeReferenceArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    eprintln!("intake-reference: POST http://{addr}/v1/orders answers 202");
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                eprintln!("intake-reference: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(tcp),
                    service_fn(|req| async { Ok::<_, Infallible>(handle(req).await) }),
                )
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/v1/orders" {
        return reply(StatusCode::NOT_FOUND, json!({"title": "Not found"}));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"title": "Unreadable body"})),
    };
    let (status, body) = answer(&body);
    reply(status, body)
}

/// The answer to one order body: `202` naming its `orderId`, or `400`.
fn answer(body: &[u8]) -> (StatusCode, Value) {
    let order_id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("orderId").and_then(Value::as_str).map(str::to_owned));
    match order_id {
        Some(id) => {
            let status_url = format!("/v1/orders/{id}");
            (
                StatusCode::ACCEPTED,
                json!({"orderId": id, "status": "accepted", "statusUrl": status_url}),
            )
        }
        None => (
            StatusCode::BAD_REQUEST,
            json!({"title": "Expected a JSON order with an orderId"}),
        ),
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
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

    #[test]
    fn an_order_is_accepted_with_its_id() {
        let (status, body) = answer(br#"{"orderId":"lt-1-7","customerId":"c-7","items":[]}"#);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["orderId"], "lt-1-7");
        assert_eq!(body["statusUrl"], "/v1/orders/lt-1-7");
    }

    #[test]
    fn a_body_without_an_order_id_is_refused() {
        assert_eq!(answer(b"not json").0, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer(br#"{"customerId":"c-1"}"#).0,
            StatusCode::BAD_REQUEST
        );
    }
}
