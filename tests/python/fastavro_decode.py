"""Decodes Confluent-framed Avro records the way Confluent's Python client
does (fastavro's schemaless_reader under the writer schema), to show that
every record walhouse writes is readable by a mainstream Avro library.

stdin: one JSON object per line, {"schema": <writer schema text>,
"value": <hex of the Avro body>}. stdout: each decoded record as JSON.
Exits non-zero, naming the record, on the first one that fails.
"""
import io
import json
import sys

import fastavro


def plain(v):
    """JSON without NaN and infinities (strict JSON readers refuse them)."""
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


for n, line in enumerate(sys.stdin):
    item = json.loads(line)
    schema = fastavro.parse_schema(json.loads(item["schema"]))
    try:
        record = fastavro.schemaless_reader(io.BytesIO(bytes.fromhex(item["value"])), schema)
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        print(f"record {n}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(plain(record), default=str, allow_nan=False))
