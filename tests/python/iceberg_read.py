"""Reads an Iceberg table with pyiceberg (a reader walhouse did not write):
argv: the catalog's directory (SQLite catalog `walhouse` in catalog.db),
or a JSON object of the SQL catalog's properties (a catalog in Postgres,
data in S3); then the table (`namespace.table`). Prints one JSON document:
the table's location, its schema, every row with each value as text, and
each snapshot's summary properties, oldest first."""

import json
import sys

from pyiceberg.catalog.sql import SqlCatalog


def text(value):
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def main():
    where, name = sys.argv[1], sys.argv[2]
    if where.startswith("{"):
        catalog = SqlCatalog("walhouse", **json.loads(where))
    else:
        catalog = SqlCatalog("walhouse", uri=f"sqlite:///{where}/catalog.db", warehouse=f"file://{where}")
    table = catalog.load_table(name)
    schema = [[f.name, str(f.field_type)] for f in table.schema().fields]
    rows = [{k: text(v) for k, v in row.items()} for row in table.scan().to_arrow().to_pylist()]
    ordered = sorted(table.snapshots(), key=lambda s: s.sequence_number)
    snapshots = [dict(s.summary.additional_properties) for s in ordered]
    print(json.dumps({"location": table.location(), "schema": schema, "rows": rows, "snapshots": snapshots}))


main()
