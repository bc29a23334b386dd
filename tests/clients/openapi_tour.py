"""Every route of Herald's HTTP API the quick start does not reach, called through a client
generated from the served OpenAPI document, every answer held to the document (see
openapi_quickstart.py, whose generator and checker this reuses).

Usage: python3 openapi_tour.py --base-url http://127.0.0.1:PORT --key ADMIN_KEY --dir DIR
           --ok-url URL --failing-url URL

`--ok-url` answers 2xx, `--failing-url` answers 5xx (the test's webhook sink); Herald must
allow them (`webhooks.allow_networks`) and use a short retry schedule, so that a delivery to
the failing one ends `failed` within `--timeout-s`.

Prints one JSON line per step and, last, {"ok": true, "operations": [...], "validated": N};
exits 1 on the first failure.
"""

import argparse
import datetime
import importlib
import json
import sys
import time
import urllib.request

from openapi_quickstart import PACKAGE, Checker, fail, generate, step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--ok-url", required=True)
    parser.add_argument("--failing-url", required=True)
    parser.add_argument("--timeout-s", type=float, default=20)
    args = parser.parse_args()

    generate(args.base_url, args.dir)

    def api(group, name):
        return importlib.import_module(f"{PACKAGE}.api.{group}.{name}")

    client_module = importlib.import_module(PACKAGE)
    models = importlib.import_module(PACKAGE + ".models")
    with urllib.request.urlopen(args.base_url + "/openapi.json", timeout=10) as r:
        checker = Checker(json.loads(r.read()))
    client = client_module.AuthenticatedClient(base_url=args.base_url, token=args.key)
    anonymous = client_module.Client(base_url=args.base_url)
    operations = []

    def call(method, path, answer, expected):
        checker.check(method, path, answer)
        if answer.status_code != expected:
            fail(f"{method.upper()} {path}: {answer.status_code}, expected {expected}: {answer.content[:2000]!r}")
        operations.append(f"{method.upper()} {path}")
        return answer.parsed

    def until(what, check):
        deadline = time.monotonic() + args.timeout_s
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                fail(f"never: {what}")
            time.sleep(0.05)

    # Operations.
    call("get", "/healthz", api("operations", "healthz").sync_detailed(client=anonymous), 200)
    call("get", "/openapi.json", api("operations", "openapi_json").sync_detailed(client=anonymous), 200)
    call("get", "/metrics", api("operations", "metrics").sync_detailed(client=client), 200)
    call("get", "/", api("graphql", "console").sync_detailed(client=anonymous), 200)

    # Webhook endpoints: two, one answering 2xx, one 5xx.
    W = "/v1/webhooks"
    created = call(
        "post",
        W,
        api("webhooks", "create_endpoint").sync_detailed(
            client=client,
            body=models.CreateWebhookEndpoint(
                url=args.ok_url, event_types=["order.*"], description="tour", max_in_flight=4
            ),
        ),
        201,
    )
    failing = call(
        "post",
        W,
        api("webhooks", "create_endpoint").sync_detailed(
            client=client,
            body=models.CreateWebhookEndpoint(url=args.failing_url, event_types=["order.accepted"]),
        ),
        201,
    )
    step("endpoints", ok=created.id, failing=failing.id)
    listed = call("get", W, api("webhooks", "list_endpoints").sync_detailed(client=client), 200)
    if {created.id, failing.id} - {e.id for e in listed.endpoints}:
        fail("list_endpoints does not list both endpoints")
    E = W + "/{webhook_id}"
    call("get", E, api("webhooks", "get_endpoint").sync_detailed(created.id, client=client), 200)
    patched = call(
        "patch",
        E,
        api("webhooks", "patch_endpoint").sync_detailed(
            created.id, client=client, body=models.PatchWebhookEndpoint(description="tour, patched")
        ),
        200,
    )
    if patched.description != "tour, patched":
        fail(f"patch_endpoint: {patched.description}")
    call(
        "post",
        E + "/rotate-secret",
        api("webhooks", "rotate_secret").sync_detailed(created.id, client=client),
        200,
    )

    # An order, to make deliveries.
    accepted = call(
        "post",
        "/v1/orders",
        api("orders", "create_order").sync_detailed(
            client=client,
            body=models.CreateOrder(
                customer_id="c-tour",
                items=[models.LineItem(sku="tea", quantity=1, unit_price=2)],
                currency="EUR",
            ),
        ),
        202,
    )
    D = E + "/deliveries"

    def deliveries(endpoint_id, state):
        page = call(
            "get", D, api("webhooks", "list_deliveries").sync_detailed(endpoint_id, client=client, limit=50), 200
        )
        return [d for d in page.deliveries if str(d.state) == state]

    succeeded = until("a delivery to the ok endpoint succeeds", lambda: deliveries(created.id, "succeeded"))
    detail = call(
        "get",
        D + "/{delivery_id}",
        api("webhooks", "get_delivery").sync_detailed(created.id, succeeded[0].id, client=client),
        200,
    )
    if not detail.attempt_log:
        fail("get_delivery: no attempt in the log")
    failed = until("the delivery to the failing endpoint fails", lambda: deliveries(failing.id, "failed"))
    step("deliveries", succeeded=succeeded[0].id, failed=failed[0].id)
    call(
        "post",
        D + "/{delivery_id}/retry",
        api("webhooks", "retry_delivery").sync_detailed(failing.id, failed[0].id, client=client),
        202,
    )
    # `since` is documented as `format: date-time`: the client takes a datetime.
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    call(
        "post",
        E + "/recover",
        api("webhooks", "recover").sync_detailed(
            failing.id, client=client, body=models.RecoverRequest(since=since)
        ),
        202,
    )

    # Events: publish one of the documented form, read it back.
    event = models.OrderEvent(
        type_="order.confirmed",
        order_id="tour-external",
        customer_id="c-tour",
        status=models.OrderStatus.CONFIRMED,
        version=2,
        occurred_at="2026-01-01T00:00:00Z",
    )
    published = call(
        "post", "/v1/events", api("events", "publish_event").sync_detailed(client=client, body=event), 202
    )
    step("published", eventId=published.event_id)

    # Server-Sent Events. A stream token is minted (201); the streams themselves never end,
    # so here each is reached with a request it refuses before streaming, the refusal held to
    # the document (tests/sse.rs reads the streams with a real SSE client).
    minted = call(
        "post", "/v1/stream-tokens", api("events", "mint_stream_token").sync_detailed(client=client), 201
    )
    step("stream token", expiresAt=str(minted.expires_at))
    # Two credentials at once (the header and ?token=) are refused.
    call(
        "get",
        "/v1/events/stream",
        api("events", "events_stream").sync_detailed(client=client, token=minted.token),
        400,
    )
    # A Last-Event-ID that is no event id is refused, with the minted token as the only
    # credential.
    call(
        "get",
        "/v1/orders/{order_id}/events",
        api("events", "order_events").sync_detailed(
            accepted.order_id, client=anonymous, token=minted.token, last_event_id_header="not-a-cursor"
        ),
        400,
    )

    # GraphQL over HTTP.
    answer = call(
        "post",
        "/graphql",
        api("graphql", "graphql_query").sync_detailed(
            client=client,
            body=models.GraphqlRequest(
                query="query($id: ID!) { order(orderId: $id) { orderId status version } }",
                variables=models.GraphqlRequestVariablesType0.from_dict({"id": accepted.order_id}),
            ),
        ),
        200,
    )
    if answer.data["order"]["orderId"] != accepted.order_id:
        fail(f"graphql_query: {answer.to_dict()}")

    # Tasks: a token that does not verify is no task, for anyone.
    T = "/v1/tasks/{token}"
    call("post", T + "/success", api("tasks", "succeed").sync_detailed(
        "not-a-token", client=client, body=models.SucceedBody.from_dict({"paid": True})), 404)
    call("post", T + "/failure", api("tasks", "fail").sync_detailed(
        "not-a-token", client=client, body=models.TaskFailure(error="declined")), 404)
    call("post", T + "/heartbeat", api("tasks", "heartbeat").sync_detailed("not-a-token", client=client), 404)

    # Admin.
    call("get", "/v1/admin/queues", api("admin", "queues").sync_detailed(client=client), 200)
    call("get", "/v1/admin/dlq", api("admin", "dead_letters").sync_detailed(client=client, limit=10), 200)
    call("post", "/v1/admin/dlq/redrive", api("admin", "redrive").sync_detailed(client=client), 200)
    call(
        "get",
        "/v1/admin/events/malformed",
        api("admin", "malformed_events").sync_detailed(client=client),
        200,
    )

    # A body that is not valid: a problem with field errors.
    problem = call(
        "post",
        W,
        api("webhooks", "create_endpoint").sync_detailed(
            client=client, body=models.CreateWebhookEndpoint(url="not a url", max_in_flight=0)
        ),
        400,
    )
    if not problem.errors:
        fail("a 400 validation problem without field errors")

    call("delete", E, api("webhooks", "delete_endpoint").sync_detailed(failing.id, client=client), 204)
    call("get", E, api("webhooks", "get_endpoint").sync_detailed(failing.id, client=client), 404)

    print(
        json.dumps(
            {"ok": True, "operations": sorted(set(operations)), "validated": checker.validated}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
