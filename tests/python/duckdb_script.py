"""Runs a DuckDB script (walhouse-sink duckdb-views' output, from the file
argv[1]) with the iceberg extension loaded, then each query of the JSON
list in argv[2]. Prints each query's rows as JSON, each value as text."""

import json
import sys
import tempfile

from duckdb_ext import connect, text_rows


def main():
    with open(sys.argv[1]) as f:
        script = f.read()
    queries = json.loads(sys.argv[2])
    with tempfile.TemporaryDirectory() as extensions:
        con = connect(extensions)
        con.execute(script)
        out = [text_rows(con.execute(q).fetchall()) for q in queries]
    print(json.dumps(out))


main()
