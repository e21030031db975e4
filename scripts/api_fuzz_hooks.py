"""Schemathesis hooks for scripts/api-fuzz: how to write the bodies of
kci's media types schemathesis does not know."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    # A batch: each generated value is one event line; a list is several.
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(v) + "\n" for v in lines).encode()
