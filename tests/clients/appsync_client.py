#!/usr/bin/env python3
"""Python gql's AWS AppSync transport as a small CLI, so the Rust integration tests can check
Herald's `graphql-ws` (AppSync real-time) dialect against a client written for AppSync itself.

    python3 appsync_client.py --url http://127.0.0.1:PORT/graphql --api-key KEY \
        --query 'subscription { onOrderUpdated { eventId status } }' [--variables JSON] \
        [--count N] [--timeout-s T] [--ready-file PATH] [--keep-alive-s S] [--trace]

stdout: one JSON line per `data` message, `{"data": {...}}`. Exit 0 after N events (`--count`,
default: until the server sends `complete`). Any failure prints one `{"error": ...}` line and
exits 1: an `error` message or a `data` carrying `errors` (`{"error": [...errors]}`), a
`connection_error` or an `error` without id (`{"error": "Server error: ..."}`), a close
(`{"error": {"message": ..., "closeCode": 4401, "reason": "..."}}`), or the timeout (default 10 s).

`--ready-file PATH` is written when the server's `start_ack` for the subscription arrives: from
then on, an event published must reach this client. `--keep-alive-s S` makes gql fail the
connection when no `ka` arrives for S seconds (gql does not read `connectionTimeoutMs` itself).
`--trace` copies every frame, both ways, to stderr.
"""

import argparse
import asyncio
import json
import logging
import sys
from typing import Any, Callable, Optional, Tuple
from urllib.parse import urlparse

from gql import Client, gql
from gql.transport.appsync_auth import AppSyncApiKeyAuthentication
from gql.transport.appsync_websockets import AppSyncWebsocketsTransport
from gql.transport.exceptions import TransportQueryError


class StartAckNoticingTransport(AppSyncWebsocketsTransport):
    """gql's AppSync transport, telling us when `start_ack` arrives.

    gql reads `start_ack` and drops it: its `_parse_answer` returns it without an id, so it never
    reaches the subscription's queue, and `subscribe()` yields nothing until the first `data`.
    The ack is the only moment at which the subscription is known to be live, so this subclass
    looks at each parsed answer in the receive loop and calls `on_start_ack(id)` for `start_ack`.
    Everything gql sends and the way it reads the rest are unchanged.
    """

    def __init__(self, *args: Any, on_start_ack: Callable[[Optional[str]], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_start_ack = on_start_ack

    def _parse_answer(self, answer: str) -> Tuple[str, Optional[int], Any]:
        parsed = super()._parse_answer(answer)
        if parsed[0] == "start_ack":
            try:
                ack_id = json.loads(answer).get("id")
            except ValueError:
                ack_id = None
            self._on_start_ack(None if ack_id is None else str(ack_id))
        return parsed


def emit(value: Any) -> None:
    sys.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def describe(exc: BaseException) -> Any:
    """A JSON form of a failure: GraphQL errors as the server sent them, else the message and,
    when the socket was closed by the server, its close code and reason."""
    if isinstance(exc, TransportQueryError) and exc.errors:
        # For an `error` message gql keeps the whole payload (`[{"errors": [...]}]`); unwrap it
        # so both kinds of GraphQL failure print as `{"error": [...errors]}`.
        if len(exc.errors) == 1 and isinstance(exc.errors[0], dict):
            inner = exc.errors[0].get("errors")
            if isinstance(inner, list):
                return inner
        return exc.errors
    described: dict = {"message": str(exc) or type(exc).__name__, "kind": type(exc).__name__}
    cause: Optional[BaseException] = exc
    while cause is not None:
        rcvd = getattr(cause, "rcvd", None)
        if rcvd is not None:
            described["closeCode"] = rcvd.code
            described["reason"] = rcvd.reason
            break
        cause = cause.__cause__ or cause.__context__
    return described


def websocket_url(url: str) -> str:
    """gql turns only `https://` into `wss://` (and `appsync-api` into `appsync-realtime-api` in
    the host); `websockets` refuses any scheme but ws/wss, so a plain-HTTP URL is mapped here."""
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


async def run(args: argparse.Namespace, variables: Optional[dict]) -> int:
    ack_seen = asyncio.Event()

    def on_start_ack(ack_id: Optional[str]) -> None:
        if args.ready_file and not ack_seen.is_set():
            with open(args.ready_file, "w") as ready:
                ready.write("ready\n")
        ack_seen.set()

    host = urlparse(args.url).netloc
    transport = StartAckNoticingTransport(
        url=websocket_url(args.url),
        auth=AppSyncApiKeyAuthentication(host=host, api_key=args.api_key),
        keep_alive_timeout=args.keep_alive_s,
        # Loopback only: never route a test connection through a proxy from the environment.
        connect_args={"proxy": None},
        on_start_ack=on_start_ack,
    )
    client = Client(transport=transport, fetch_schema_from_transport=False)
    received = 0
    async with client as session:
        request = gql(args.query)
        if variables is not None:
            request.variable_values = variables
        events = session.subscribe(request, get_execution_result=True)
        try:
            if args.count == 0:
                # Only the readiness is wanted: wait for start_ack while the generator runs.
                next_event = asyncio.ensure_future(events.__anext__())
                ack_wait = asyncio.ensure_future(ack_seen.wait())
                done, _ = await asyncio.wait(
                    {next_event, ack_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in (next_event, ack_wait):
                    if task not in done:
                        task.cancel()
                        # Let the generator unwind (gql sends `stop` on the way) before aclose.
                        await asyncio.wait({task})
                if next_event in done and not next_event.cancelled():
                    next_event.result()  # raises the server's error, if that came first
                return 0
            async for result in events:
                line = {"data": result.data}
                if result.extensions:
                    line["extensions"] = result.extensions
                emit(line)
                received += 1
                if args.count is not None and received >= args.count:
                    return 0
        finally:
            # Sends `stop` for the subscription (gql does not wait for the `complete` reply);
            # leaving `async with` then closes the socket with 1000. No `connection_terminate`.
            await events.aclose()
    if args.count is not None and received < args.count:
        emit({"error": {"completed": f"server completed after {received} of {args.count} events"}})
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http(s):// or ws(s):// URL of /graphql")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--variables", help="JSON object")
    parser.add_argument("--count", type=int)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--ready-file")
    parser.add_argument("--keep-alive-s", type=float)
    parser.add_argument("--trace", action="store_true", help="log every frame to stderr")
    try:
        args = parser.parse_args()
    except SystemExit as exit_:
        if exit_.code:
            emit({"error": "usage: see --help"})
        raise
    try:
        variables = json.loads(args.variables) if args.variables else None
    except ValueError as exc:
        emit({"error": f"--variables is not JSON: {exc}"})
        return 1
    if args.trace:
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
        logging.getLogger("gql.transport.common.base").setLevel(logging.DEBUG)

    try:
        return asyncio.run(asyncio.wait_for(run(args, variables), args.timeout_s))
    except asyncio.TimeoutError:
        emit({"error": {"timeout": f"no completion after {args.timeout_s} s"}})
    except Exception as exc:  # every failure is reported the same way, as one JSON line
        emit({"error": describe(exc)})
    return 1


if __name__ == "__main__":
    sys.exit(main())
