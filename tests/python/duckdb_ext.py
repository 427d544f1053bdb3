"""A DuckDB connection with the iceberg and avro extensions of the PyPI
wheels loaded (no download: the wheels are what .ci/install put in place)."""

import glob
import os

import duckdb


def connect(extensions):
    """A connection whose extension directory is `extensions` (a fresh
    directory the caller owns)."""
    site = os.path.dirname(os.path.dirname(duckdb.__file__))
    con = duckdb.connect(config={
        "allow_unsigned_extensions": "true",
        "autoinstall_known_extensions": "false",
        "extension_directory": extensions,
    })
    for ext in ("avro", "iceberg"):
        (path,) = glob.glob(f"{site}/duckdb_extension_{ext}/extensions/v*/{ext}.duckdb_extension")
        con.execute(f"INSTALL '{path}'")
        con.execute(f"LOAD {ext}")
    return con


def text_rows(rows):
    return [[None if v is None else str(v) for v in row] for row in rows]
