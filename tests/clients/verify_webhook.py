#!/usr/bin/env python3
"""Verifies webhook deliveries with the reference `standardwebhooks` library.

Reads one JSON object per line on stdin, {"secret": "whsec_...", "headers": {...}, "body": "..."},
and prints one line per input: `ok`, or `fail <reason>`. Used by tests/webhooks.rs.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            Webhook(request["secret"]).verify(request["body"], request["headers"])
            print("ok", flush=True)
        except Exception as error:  # noqa: BLE001 - every failure is reported, not raised
            reason = str(error).replace("\n", " ") or type(error).__name__
            print(f"fail {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
