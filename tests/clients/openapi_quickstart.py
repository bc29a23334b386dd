"""The README quick start, run with a Python client generated from Herald's served OpenAPI
document by openapi-python-client.

Usage: python3 openapi_quickstart.py --base-url http://127.0.0.1:PORT --key ADMIN_KEY --dir DIR

1. Generates the client from GET /openapi.json into DIR (`--meta none`, no post hooks: no
   formatter runs) and imports it.
2. Runs the quick start through it: create an order, read its status until the worker
   confirmed it, post a transition to `preparing`, read the order, list the order's events;
   plus a few refusals (an illegal transition, an unknown order, no credentials).
3. Holds every answer to the document: its status must be one the operation documents, and
   its body must validate (JSON Schema 2020-12) against the schema documented for that status,
   with no field the schema does not name (`unevaluatedProperties: false` is added to every
   object schema that is not a part of another's `allOf`).

Prints one JSON line per step and, last, {"ok": true, "orderId", "statuses", "eventTypes",
"validated", "generateSeconds"}; exits 1 on the first failure.
"""

import argparse
import copy
import importlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema

PACKAGE = "herald_openapi_client"
DOCUMENT_URI = "urn:herald:openapi"


def fail(message):
    print(json.dumps({"ok": False, "error": message}), flush=True)
    sys.exit(1)


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def strict(document):
    """The document with `unevaluatedProperties: false` on each object schema that stands on
    its own (not a member of an `allOf`, where it would refuse its siblings' fields)."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    in_all_of = set()
    for schema in schemas.values():
        for part in schema.get("allOf", []):
            ref = part.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                in_all_of.add(ref.rsplit("/", 1)[1])
    for name, schema in schemas.items():
        if "allOf" in schema or ("properties" in schema and name not in in_all_of):
            schema["unevaluatedProperties"] = False
    return document


class Checker:
    """Validates answers against the operation's documented responses."""

    def __init__(self, document):
        self.document = strict(document)
        resource = referencing.Resource.from_contents(
            self.document, default_specification=referencing.jsonschema.DRAFT202012
        )
        self.registry = referencing.Registry().with_resource(DOCUMENT_URI, resource)
        self.validated = 0

    def check(self, method, path, response):
        operation = self.document["paths"][path][method]
        status = str(int(response.status_code))
        documented = operation["responses"].get(status)
        if documented is None:
            fail(f"{method.upper()} {path} answered {status}, which it does not document")
        content = documented.get("content")
        if not content:
            if response.content:
                fail(f"{method.upper()} {path} {status} has a body but documents none")
            self.validated += 1
            return
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in content:
            fail(f"{method.upper()} {path} {status}: content-type {content_type} not in {list(content)}")
        pointer = "/".join(
            [
                "#",
                "paths",
                path.replace("~", "~0").replace("/", "~1"),
                method,
                "responses",
                status,
                "content",
                content_type.replace("/", "~1"),
                "schema",
            ]
        )
        validator = jsonschema.Draft202012Validator(
            {"$ref": DOCUMENT_URI + pointer}, registry=self.registry
        )
        # A JSON body is validated as its value; a text one (metrics, the console) as a string.
        if content_type == "application/json" or content_type.endswith("+json"):
            body = json.loads(response.content)
        else:
            body = response.content.decode("utf-8")
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        if errors:
            fail(
                f"{method.upper()} {path} {status}: the body does not match the document: "
                + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
                + f" (body: {json.dumps(body)[:1000]})"
            )
        self.validated += 1


def generate(base_url, directory):
    """Generates the client package into `directory`; returns the seconds it took."""
    config = Path(directory) / "openapi-python-client.yaml"
    config.write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--url",
            base_url + "/openapi.json",
            "--meta",
            "none",
            "--config",
            str(config),
            "--output-path",
            str(Path(directory) / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    # The generator reports document problems as warnings and carries on: any is a failure.
    if result.returncode != 0 or "Warning" in result.stdout or "Error" in result.stdout:
        fail(f"openapi-python-client: {result.returncode}: {result.stdout[-3000:]} {result.stderr[-3000:]}")
    sys.path.insert(0, str(directory))
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--timeout-s", type=float, default=20)
    args = parser.parse_args()

    generate_seconds = generate(args.base_url, args.dir)
    step("generated", seconds=round(generate_seconds, 3))
    client_module = importlib.import_module(PACKAGE)
    models = importlib.import_module(PACKAGE + ".models")
    orders = {
        name: importlib.import_module(f"{PACKAGE}.api.orders.{name}")
        for name in ["create_order", "get_status", "create_transition", "get_order"]
    }
    list_events = importlib.import_module(PACKAGE + ".api.events.list_events")
    readyz = importlib.import_module(PACKAGE + ".api.operations.readyz")
    queues = importlib.import_module(PACKAGE + ".api.admin.queues")

    with urllib.request.urlopen(args.base_url + "/openapi.json", timeout=10) as r:
        checker = Checker(json.loads(r.read()))

    client = client_module.AuthenticatedClient(
        base_url=args.base_url, token=args.key, raise_on_unexpected_status=True
    )
    anonymous = client_module.Client(base_url=args.base_url, raise_on_unexpected_status=True)

    answer = readyz.sync_detailed(client=anonymous)
    checker.check("get", "/readyz", answer)

    # 1. Create an order (the README's curl, through the generated client).
    body = models.CreateOrder(
        customer_id="c-1",
        items=[models.LineItem(sku="tea", quantity=2, unit_price=4.5)],
        currency="EUR",
    )
    answer = orders["create_order"].sync_detailed(
        client=client, body=body, idempotency_key="quickstart-1"
    )
    checker.check("post", "/v1/orders", answer)
    if answer.status_code != 202 or not isinstance(answer.parsed, models.OrderAccepted):
        fail(f"create_order: {answer.status_code} {answer.content!r}")
    order_id = answer.parsed.order_id
    if answer.headers.get("location") != answer.parsed.status_url:
        fail(f"Location {answer.headers.get('location')} != statusUrl {answer.parsed.status_url}")
    step("created", orderId=order_id, status=str(answer.parsed.status))

    # The same key and body again: the first answer, replayed.
    again = orders["create_order"].sync_detailed(
        client=client, body=body, idempotency_key="quickstart-1"
    )
    checker.check("post", "/v1/orders", again)
    if again.parsed.order_id != order_id:
        fail("an Idempotency-Key replay named another order")

    def status_until(wanted):
        deadline = time.monotonic() + args.timeout_s
        while True:
            answer = orders["get_status"].sync_detailed(order_id, client=client)
            checker.check("get", "/v1/orders/{order_id}/status", answer)
            if answer.status_code != 200:
                fail(f"get_status: {answer.status_code} {answer.content!r}")
            if str(answer.parsed.status) == wanted:
                return answer.parsed
            if time.monotonic() > deadline:
                fail(f"status stayed {answer.parsed.status}, never {wanted}")
            time.sleep(0.05)

    # 2. Read its status: the worker confirms it.
    confirmed = status_until("confirmed")
    step("status", status=str(confirmed.status), version=confirmed.version)

    # 3. Post a transition.
    answer = orders["create_transition"].sync_detailed(
        order_id,
        client=client,
        body=models.TransitionRequest(status=models.OrderStatus.PREPARING, reason="packing"),
    )
    checker.check("post", "/v1/orders/{order_id}/transitions", answer)
    if answer.status_code != 202 or not isinstance(answer.parsed, models.TransitionAccepted):
        fail(f"create_transition: {answer.status_code} {answer.content!r}")
    preparing = status_until("preparing")
    step("transitioned", status=str(preparing.status), version=preparing.version)

    # An illegal transition is a problem the client parses.
    answer = orders["create_transition"].sync_detailed(
        order_id,
        client=client,
        body=models.TransitionRequest(status=models.OrderStatus.DELIVERED),
    )
    checker.check("post", "/v1/orders/{order_id}/transitions", answer)
    if answer.status_code != 409 or not isinstance(answer.parsed, models.Problem):
        fail(f"illegal transition: {answer.status_code} {answer.content!r}")
    step("refused", status=answer.status_code, type=answer.parsed.type_)

    # The whole order with its history.
    answer = orders["get_order"].sync_detailed(order_id, client=client)
    checker.check("get", "/v1/orders/{order_id}", answer)
    if answer.status_code != 200 or not isinstance(answer.parsed, models.OrderView):
        fail(f"get_order: {answer.status_code} {answer.content!r}")
    statuses = [str(h.status) for h in answer.parsed.history]
    step("order", history=statuses)

    # 4. List events: the order's, oldest first, page by page.
    event_types, after = [], "0"
    deadline = time.monotonic() + args.timeout_s
    while True:
        answer = list_events.sync_detailed(client=client, after=after, limit=100)
        checker.check("get", "/v1/events", answer)
        if answer.status_code != 200 or not isinstance(answer.parsed, models.EventPage):
            fail(f"list_events: {answer.status_code} {answer.content!r}")
        event_types += [e.type_ for e in answer.parsed.events if e.order_id == order_id]
        if answer.parsed.next_ == after or not answer.parsed.events:
            break
        after = answer.parsed.next_
        if time.monotonic() > deadline:
            fail("the event log did not end")
    step("events", types=event_types)

    # Refusals: an unknown order, no credentials; and an admin read.
    answer = orders["get_status"].sync_detailed("no-such-order", client=client)
    checker.check("get", "/v1/orders/{order_id}/status", answer)
    if answer.status_code != 404 or not isinstance(answer.parsed, models.Problem):
        fail(f"unknown order: {answer.status_code} {answer.content!r}")
    answer = orders["get_status"].sync_detailed(order_id, client=anonymous)
    checker.check("get", "/v1/orders/{order_id}/status", answer)
    if answer.status_code != 401:
        fail(f"no credentials: {answer.status_code} {answer.content!r}")
    answer = queues.sync_detailed(client=client)
    checker.check("get", "/v1/admin/queues", answer)

    print(
        json.dumps(
            {
                "ok": True,
                "orderId": order_id,
                "statuses": statuses,
                "eventTypes": event_types,
                "validated": checker.validated,
                "generateSeconds": round(generate_seconds, 3),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
