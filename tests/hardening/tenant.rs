//! Items 3 and 8 (first part) of issue 12: customer tokens are bound to a partner, and a foreign
//! order answers exactly like a missing one.
//!
//! Three customers share the customerId `c-1`: acme's (a token whose `partner_id` claim is
//! `acme`), globex's (`globex`) and one of no partner (a token without the claim). Before the
//! fix each of them read, and was pushed, every `c-1` order of every partner; a partner asking
//! for another partner's order got 403 where a missing one got 404, an existence oracle.

use crate::common::ws::*;
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_engines!(
    a_customer_reads_only_its_own_partners_orders_over_http_and_graphql,
    a_customers_subscriptions_never_carry_another_partners_events,
    foreign_orders_answer_exactly_like_missing_ones,
);

/// The three `c-1` customers: (who, token, the partnerId its orders carry).
fn customers() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        (
            "acme c-1",
            partner_customer_token("c-1", "acme", 600),
            Some("acme"),
        ),
        (
            "globex c-1",
            partner_customer_token("c-1", "globex", 600),
            Some("globex"),
        ),
        ("partnerless c-1", customer_token("c-1", 600), None),
    ]
}

/// One `c-1` order per partner and one without a partner, each confirmed: (orderId, partner).
async fn c1_orders(s: &Stack) -> Vec<(&'static str, Option<&'static str>)> {
    let orders = [
        ("t-acme", ACME_KEY, Some("acme")),
        ("t-globex", GLOBEX_KEY, Some("globex")),
        ("t-none", ADMIN_KEY, None),
    ];
    for (order, key, _) in orders {
        s.order(key, order, "c-1").await;
    }
    orders.iter().map(|(o, _, p)| (*o, *p)).collect()
}

async fn graphql(s: &Stack, credential: &str, query: Value) -> (StatusCode, Value) {
    let r = s
        .http
        .post(s.herald.url("/graphql"))
        .header("authorization", format!("Bearer {credential}"))
        .json(&query)
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.expect("json body"))
}

fn order_query(order_id: &str) -> Value {
    json!({
        "query": "query($id: ID!) { order(orderId: $id) { orderId customerId partnerId } }",
        "variables": {"id": order_id}
    })
}

async fn a_customer_reads_only_its_own_partners_orders_over_http_and_graphql(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    let orders = c1_orders(&s).await;
    let (mut reads, mut refused, mut leaked) = (0, 0, Vec::new());
    for (who, token, own_partner) in customers() {
        for (order, partner) in &orders {
            let own = partner == &own_partner;
            for path in [
                format!("/v1/orders/{order}"),
                format!("/v1/orders/{order}/status"),
            ] {
                let r = s.get(&path, &token).await;
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                reads += 1;
                match (own, status) {
                    (true, StatusCode::OK) => {}
                    (false, StatusCode::NOT_FOUND) => refused += 1,
                    _ => leaked.push(format!("{who} GET {path}: {status} {body}")),
                }
            }
            let (status, body) = graphql(&s, &token, order_query(order)).await;
            reads += 1;
            let shown = &body["data"]["order"];
            match (own, status, shown.is_null()) {
                (true, StatusCode::OK, false) => {
                    assert_eq!(shown["orderId"], *order, "{who}: {body}");
                    assert_eq!(shown["partnerId"], json!(partner), "{who}: {body}");
                }
                (false, StatusCode::OK, true) => refused += 1,
                _ => leaked.push(format!("{who} query order {order}: {status} {body}")),
            }
        }
        // The event feed holds this customer's own orders only.
        let feed: Value = s
            .get("/v1/events?after=0&limit=1000", &token)
            .await
            .json()
            .await
            .expect("feed");
        let events = feed["events"].as_array().cloned().unwrap_or_default();
        let own_order = orders
            .iter()
            .find(|(_, p)| *p == own_partner)
            .map(|(o, _)| *o)
            .expect("an order per customer");
        assert!(
            events.iter().any(|e| e["orderId"] == own_order),
            "{who} sees its own order's events: {feed}"
        );
        for e in &events {
            reads += 1;
            if e["orderId"] != own_order || e["partnerId"] != json!(own_partner) {
                leaked.push(format!("{who} GET /v1/events: {e}"));
            }
        }
    }
    crate::figures(
        3,
        &format!("a_customer_reads_only_its_own_partners_orders_over_http_and_graphql/{kind:?}"),
        json!({"engine": format!("{kind:?}"), "reads": reads, "refused": refused, "leaked": leaked.len()}),
    );
    assert!(leaked.is_empty(), "{}", leaked.join("\n"));
    // Each customer was refused the two other customers' orders on three routes each.
    assert_eq!(refused, 3 * 2 * 3);
}

// ---------------------------------------------------------------------------------------------
// Subscriptions, on both dialects.

const SUBSCRIBE: &str = "subscription($o: ID, $c: ID, $p: ID) { onOrderUpdated(orderId: $o, customerId: $c, partnerId: $p) { orderId customerId partnerId status } }";

/// A graphql-transport-ws connection authorized in `connection_init`.
async fn transport_ws(s: &Stack, token: &str) -> Ws {
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    ws
}

/// An AppSync connection whose `header` query parameter carries `credential`.
async fn appsync(s: &Stack, credential: &str) -> Ws {
    use base64::Engine as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let header = base64::engine::general_purpose::STANDARD.encode(
        json!({"host": "herald.test", "Authorization": format!("Bearer {credential}")}).to_string(),
    );
    let url = format!("{}?header={header}&payload=e30=", ws_url(&s.herald));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-ws".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    ws
}

/// The next AppSync message that is not a keepalive.
async fn next_appsync(ws: &mut Ws) -> Value {
    loop {
        let m = next(ws).await;
        if m["type"] != "ka" {
            return m;
        }
    }
}

/// An AppSync `start`; `authorization`: the start's own credential, when given.
fn start(id: &str, variables: Value, authorization: Option<&str>) -> Value {
    let data = json!({"query": SUBSCRIBE, "variables": variables}).to_string();
    let mut payload = json!({"data": data});
    if let Some(token) = authorization {
        payload["extensions"] = json!({"authorization": {"host": "herald.test", "Authorization": format!("Bearer {token}")}});
    }
    json!({"id": id, "type": "start", "payload": payload})
}

/// A subscription's events up to `last_order`'s confirmation (the log is ordered: anything
/// published before it arrived first). `appsync`: the dialect of the messages.
async fn events_until(ws: &mut Ws, appsync: bool, last_order: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let m = if appsync {
            next_appsync(ws).await
        } else {
            next(ws).await
        };
        let expected = if appsync { "data" } else { "next" };
        assert_eq!(m["type"], expected, "{m}");
        let event = m["payload"]["data"]["onOrderUpdated"].clone();
        events.push(event.clone());
        if event["orderId"] == last_order && event["status"] == "CONFIRMED" {
            return events;
        }
    }
}

async fn a_customers_subscriptions_never_carry_another_partners_events(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    s.order(ACME_KEY, "s-acme-0", "c-1").await;
    s.order(GLOBEX_KEY, "s-globex-0", "c-1").await;
    s.order(ADMIN_KEY, "s-none-0", "c-1").await;
    let acme_c1 = partner_customer_token("c-1", "acme", 600);
    let none_c1 = customer_token("c-1", 600);
    let mut refusals = 0;

    // Asking for another partner's order, or another partner, is refused on both dialects.
    let foreign = [
        (&acme_c1, json!({"o": "s-globex-0"})),
        (&acme_c1, json!({"o": "s-none-0"})),
        (&acme_c1, json!({"p": "globex"})),
        (&none_c1, json!({"o": "s-acme-0"})),
        (&none_c1, json!({"p": "acme"})),
    ];
    for (token, variables) in &foreign {
        let mut ws = transport_ws(&s, token).await;
        send(
            &mut ws,
            json!({"id": "x", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": variables}}),
        )
        .await;
        let answer = next(&mut ws).await;
        assert_eq!(answer["type"], "error", "{variables}: {answer}");
        assert_eq!(
            answer["payload"][0]["extensions"]["code"], "FORBIDDEN",
            "{variables}: {answer}"
        );
        let mut ws = appsync(&s, token).await;
        send(&mut ws, start("x", variables.clone(), None)).await;
        let answer = next_appsync(&mut ws).await;
        assert_eq!(answer["type"], "error", "{variables}: {answer}");
        assert_eq!(
            answer["payload"]["errors"][0]["errorType"], "UnauthorizedException",
            "{variables}: {answer}"
        );
        refusals += 2;
    }
    // The start's own credential is bound the same way (an admin connection, a customer start).
    let mut ws = appsync(&s, ADMIN_KEY).await;
    send(
        &mut ws,
        start("y", json!({"o": "s-globex-0"}), Some(&acme_c1)),
    )
    .await;
    let answer = next_appsync(&mut ws).await;
    assert_eq!(answer["type"], "error", "{answer}");
    refusals += 1;

    // Unfiltered subscriptions, and ones naming only the customer: each its own orders only.
    let mut subs = Vec::new();
    for (who, token, variables) in [
        ("acme c-1", &acme_c1, json!({})),
        ("acme c-1 by customerId", &acme_c1, json!({"c": "c-1"})),
        ("partnerless c-1", &none_c1, json!({})),
        (
            "partnerless c-1 by customerId",
            &none_c1,
            json!({"c": "c-1"}),
        ),
    ] {
        let mut ws = transport_ws(&s, token).await;
        send(
            &mut ws,
            json!({"id": "s", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": variables.clone()}}),
        )
        .await;
        // The server has read the subscribe once a ping round trip is done.
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(next(&mut ws).await["type"], "pong");
        subs.push((format!("{who} (graphql-transport-ws)"), ws, false, token));
        let mut ws = appsync(&s, token).await;
        send(&mut ws, start("s", variables.clone(), None)).await;
        assert_eq!(next_appsync(&mut ws).await["type"], "start_ack");
        subs.push((format!("{who} (AppSync)"), ws, true, token));
    }
    let mut ws = appsync(&s, ADMIN_KEY).await;
    send(&mut ws, start("s", json!({}), Some(&none_c1))).await;
    assert_eq!(next_appsync(&mut ws).await["type"], "start_ack");
    subs.push((
        "partnerless c-1 (AppSync start credential)".into(),
        ws,
        true,
        &none_c1,
    ));

    // Foreign c-1 orders (and an event another program appends) first, then each customer's
    // own, interleaved, each customer's last order after the others' foreign ones.
    s.order(GLOBEX_KEY, "s-globex-1", "c-1").await;
    s.publish(external_event("s-globex-x", "c-1", Some("globex"), 1))
        .await;
    s.order(ADMIN_KEY, "s-none-1", "c-1").await;
    s.order(ACME_KEY, "s-acme-1", "c-1").await;
    s.order(GLOBEX_KEY, "s-globex-2", "c-1").await;
    s.order(ADMIN_KEY, "s-none-2", "c-1").await;
    s.order(ACME_KEY, "s-acme-2", "c-1").await;

    let (mut delivered, mut leaked) = (0, Vec::new());
    for (who, mut ws, dialect_appsync, token) in subs {
        let (own_partner, own_orders, last) = if token == &acme_c1 {
            (json!("acme"), vec!["s-acme-1", "s-acme-2"], "s-acme-2")
        } else {
            (Value::Null, vec!["s-none-1", "s-none-2"], "s-none-2")
        };
        let events = events_until(&mut ws, dialect_appsync, last).await;
        for e in &events {
            delivered += 1;
            let own = own_orders.iter().any(|o| e["orderId"] == *o);
            if !own || e["partnerId"] != own_partner || e["customerId"] != "c-1" {
                leaked.push(format!("{who}: {e}"));
            }
        }
        assert_eq!(
            events.len(),
            2 * own_orders.len(),
            "{who}: accepted and confirmed of each own order: {events:?}"
        );
    }
    crate::figures(
        3,
        &format!("a_customers_subscriptions_never_carry_another_partners_events/{kind:?}"),
        json!({"engine": format!("{kind:?}"), "refused_subscribes": refusals, "events_delivered": delivered, "leaked": leaked.len()}),
    );
    assert!(leaked.is_empty(), "{}", leaked.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Item 8: no existence oracle.

/// An answer with `id` written as `{id}`, for comparing a foreign order's with a missing one's.
async fn answer(r: reqwest::Response, id: &str) -> (StatusCode, String, String) {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.text().await.unwrap_or_default().replace(id, "{id}");
    (status, content_type, body)
}

async fn call(s: &Stack, method: &str, path: &str, credential: &str) -> reqwest::Response {
    let request = if method == "POST" {
        s.http
            .post(s.herald.url(path))
            .json(&json!({"status": "cancelled"}))
    } else {
        s.http.get(s.herald.url(path))
    };
    request
        .header("authorization", format!("Bearer {credential}"))
        .send()
        .await
        .expect("request")
}

async fn foreign_orders_answer_exactly_like_missing_ones(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    // acme's order of its customer `acme-cust-9`; globex's own order `g-own`.
    s.order(ACME_KEY, "a-secret-7", "acme-cust-9").await;
    s.order(GLOBEX_KEY, "g-own", "g-cust").await;
    let (foreign, missing) = ("a-secret-7", "never-made-7");
    let globex_customer = partner_customer_token("acme-cust-9", "globex", 600);
    let mut compared = 0;
    let mut differing = Vec::new();

    // Every route a partner or customer calls with an order id.
    for (who, credential) in [
        ("globex", GLOBEX_KEY.to_string()),
        ("globex's acme-cust-9", globex_customer.clone()),
    ] {
        for (method, path) in [
            ("GET", "/v1/orders/{id}"),
            ("GET", "/v1/orders/{id}/status"),
            ("POST", "/v1/orders/{id}/transitions"),
        ] {
            let of_foreign = answer(
                call(&s, method, &path.replace("{id}", foreign), &credential).await,
                foreign,
            )
            .await;
            let of_missing = answer(
                call(&s, method, &path.replace("{id}", missing), &credential).await,
                missing,
            )
            .await;
            compared += 1;
            if of_foreign != of_missing {
                differing.push(format!(
                    "{who} {method} {path}: foreign {of_foreign:?} / missing {of_missing:?}"
                ));
            }
            // Partners get 404 (customers may not request transitions at all: 403 either way).
            if who == "globex" {
                assert_eq!(of_missing.0, StatusCode::NOT_FOUND, "{method} {path}");
                assert_eq!(of_missing.1, "application/problem+json");
            }
        }
        // The GraphQL query and a subscription to the order.
        let (status_f, body_f) = graphql(&s, &credential, order_query(foreign)).await;
        let (status_m, body_m) = graphql(&s, &credential, order_query(missing)).await;
        compared += 1;
        let strip = |v: &Value, id: &str| v.to_string().replace(id, "{id}");
        if (status_f, strip(&body_f, foreign)) != (status_m, strip(&body_m, missing)) {
            differing.push(format!("{who} query: {body_f} / {body_m}"));
        }
        let mut ws = transport_ws(&s, &credential).await;
        let mut refusals = Vec::new();
        for (n, id) in [foreign, missing].into_iter().enumerate() {
            send(
                &mut ws,
                json!({"id": format!("q{n}"), "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"o": id}}}),
            )
            .await;
            let m = next(&mut ws).await;
            refusals.push(strip(&m["payload"], id));
        }
        compared += 1;
        if refusals[0] != refusals[1] {
            differing.push(format!("{who} subscribe: {refusals:?}"));
        }
    }

    // POST /v1/orders naming acme's orderId answers as for any taken id (globex's own), and
    // says nothing of the owner; nothing changes.
    let attempt = |id: &str| {
        let mut body = order_body(id, "g-cust");
        body["partnerId"] = json!("globex");
        body
    };
    let taken_foreign = s.post("/v1/orders", GLOBEX_KEY, &attempt(foreign)).await;
    let taken_foreign = answer(taken_foreign, foreign).await;
    let taken_own = s.post("/v1/orders", GLOBEX_KEY, &attempt("g-own")).await;
    let taken_own = answer(taken_own, "g-own").await;
    compared += 1;
    assert_eq!(taken_foreign.0, StatusCode::CONFLICT, "{taken_foreign:?}");
    if taken_foreign != taken_own {
        differing.push(format!(
            "POST /v1/orders: foreign {taken_foreign:?} / own {taken_own:?}"
        ));
    }
    // With an Idempotency-Key too.
    let keyed = s
        .http
        .post(s.herald.url("/v1/orders"))
        .header("x-api-key", GLOBEX_KEY)
        .header("idempotency-key", "probe-1")
        .json(&attempt(foreign))
        .send()
        .await
        .expect("request");
    let keyed = answer(keyed, foreign).await;
    compared += 1;
    if keyed != taken_own {
        differing.push(format!("keyed POST /v1/orders: {keyed:?} / {taken_own:?}"));
    }
    let owner_marks = ["acme", "acme-cust-9"];
    let revealed = [&taken_foreign, &keyed]
        .iter()
        .filter(|a| owner_marks.iter().any(|m| a.2.contains(m)))
        .count();
    let record: Value = s
        .get(&format!("/v1/orders/{foreign}"), ADMIN_KEY)
        .await
        .json()
        .await
        .expect("order");
    assert_eq!(record["partnerId"], "acme", "{record}");
    assert_eq!(record["customerId"], "acme-cust-9", "{record}");
    assert_eq!(record["version"], 2, "nothing was applied to it: {record}");

    crate::figures(
        8,
        &format!("foreign_orders_answer_exactly_like_missing_ones/{kind:?}"),
        json!({"engine": format!("{kind:?}"), "compared": compared, "differing": differing.len(), "owner_revealed": revealed}),
    );
    assert!(differing.is_empty(), "{}", differing.join("\n"));
    assert_eq!(revealed, 0, "{taken_foreign:?} {keyed:?}");
}
