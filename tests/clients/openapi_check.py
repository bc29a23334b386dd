"""Validates Herald's served OpenAPI document with a third-party validator
(openapi-spec-validator, OpenAPI 3.1 rules and the JSON Schema 2020-12 dialect).

Usage: python3 openapi_check.py --url http://127.0.0.1:PORT/openapi.json

Prints one JSON line: {"openapi": "3.1.0", "valid": true, "paths": N, "brokenRefused": true}
and exits 0, or prints the validator's error and exits 1. `brokenRefused` shows the validator
really validates: a copy of the document with an operation whose response is not a response
object must be refused.
"""

import argparse
import copy
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        if response.status != 200:
            raise SystemExit(f"GET {url}: {response.status}")
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise SystemExit(f"GET {url}: content-type {content_type!r}")
        return json.loads(response.read())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    document = fetch(args.url)
    try:
        validate(document)
    except OpenAPIValidationError as e:
        print(json.dumps({"valid": False, "error": str(e)[:4000]}))
        return 1
    broken = copy.deepcopy(document)
    first_path = next(iter(broken["paths"].values()))
    first_operation = next(iter(first_path.values()))
    first_operation["responses"]["200"] = {"content": "not a response object"}
    try:
        validate(broken)
        broken_refused = False
    except OpenAPIValidationError:
        broken_refused = True
    print(
        json.dumps(
            {
                "openapi": document.get("openapi"),
                "valid": True,
                "paths": len(document["paths"]),
                "brokenRefused": broken_refused,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
