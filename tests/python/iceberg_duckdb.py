"""Runs a query with DuckDB's iceberg extension (a second reader walhouse
did not write): argv: the catalog's directory, the table
(`namespace.table`), and SQL in which `t` is that table. The table's
current metadata file is looked up in the SQLite catalog. Prints the rows
as JSON, each value as text."""

import glob
import json
import os
import sqlite3
import sys
import tempfile

import duckdb


def main():
    directory, name, sql = sys.argv[1], sys.argv[2], sys.argv[3]
    namespace, table = name.split(".", 1)
    with sqlite3.connect(os.path.join(directory, "catalog.db")) as catalog:
        (location,) = catalog.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'walhouse' "
            "AND table_namespace = ? AND table_name = ?",
            (namespace, table),
        ).fetchone()
    site = os.path.dirname(os.path.dirname(duckdb.__file__))
    with tempfile.TemporaryDirectory() as extensions:
        con = duckdb.connect(config={
            "allow_unsigned_extensions": "true",
            "autoinstall_known_extensions": "false",
            "extension_directory": extensions,
        })
        for ext in ("avro", "iceberg"):
            (path,) = glob.glob(f"{site}/duckdb_extension_{ext}/extensions/v*/{ext}.duckdb_extension")
            con.execute(f"INSTALL '{path}'")
            con.execute(f"LOAD {ext}")
        con.execute(f"CREATE VIEW t AS SELECT * FROM iceberg_scan('{location}')")
        rows = con.execute(sql).fetchall()
    print(json.dumps([[None if v is None else str(v) for v in row] for row in rows]))


main()
