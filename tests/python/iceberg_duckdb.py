"""Runs a query with DuckDB's iceberg extension (a second reader walhouse
did not write): argv: the catalog's directory, the table
(`namespace.table`), and SQL in which `t` is that table. The table's
current metadata file is looked up in the SQLite catalog. Prints the rows
as JSON, each value as text."""

import json
import os
import sqlite3
import sys
import tempfile

from duckdb_ext import connect, text_rows


def main():
    directory, name, sql = sys.argv[1], sys.argv[2], sys.argv[3]
    namespace, table = name.split(".", 1)
    with sqlite3.connect(os.path.join(directory, "catalog.db")) as catalog:
        (location,) = catalog.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'walhouse' "
            "AND table_namespace = ? AND table_name = ?",
            (namespace, table),
        ).fetchone()
    with tempfile.TemporaryDirectory() as extensions:
        con = connect(extensions)
        con.execute(f"CREATE VIEW t AS SELECT * FROM iceberg_scan('{location}')")
        rows = con.execute(sql).fetchall()
    print(json.dumps(text_rows(rows)))


main()
