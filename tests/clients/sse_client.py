"""A Server-Sent Events client on Herald's SSE routes with `httpx-sse` (the httpx SSE client).

    python3 sse_client.py --url http://H/v1/orders/ID/events [--api-key KEY | --token T]
        [--last-event-id ID] [--count N] [--timeout-s T]

Prints one JSON line per event, `{"id", "event", "data": <parsed>}`, and exits 0 after N
events. An `event: error` frame from Herald, a refusal or a timeout: one `{"error": ...}` line
and exit 1.
"""

import argparse
import json
import sys

import httpx
from httpx_sse import connect_sse


def emit(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--token")
    parser.add_argument("--last-event-id")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=20)
    args = parser.parse_args()
    headers = {}
    if args.api_key:
        headers["x-api-key"] = args.api_key
    if args.last_event_id:
        headers["Last-Event-ID"] = args.last_event_id
    params = {"token": args.token} if args.token else {}
    got = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(args.timeout_s)) as client:
            with connect_sse(client, "GET", args.url, headers=headers, params=params) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    emit({"error": source.response.json()})
                    return 1
                for sse in source.iter_sse():
                    if not sse.data:
                        # A frame with no data (the `retry:` hint) dispatches no event in
                        # browsers; httpx-sse hands it over.
                        continue
                    if sse.event == "error":
                        emit({"error": json.loads(sse.data)})
                        return 1
                    emit({"id": sse.id, "event": sse.event, "data": json.loads(sse.data)})
                    got += 1
                    if got >= args.count:
                        return 0
    except httpx.HTTPError as e:
        emit({"error": f"{type(e).__name__}: {e}"})
        return 1
    emit({"error": f"the stream ended after {got} events"})
    return 1


if __name__ == "__main__":
    sys.exit(main())
