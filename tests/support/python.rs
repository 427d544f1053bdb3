//! Records read the way Confluent's Python client reads them: fastavro
//! (installed by `.ci/install` under `$WALHOUSE_TOOLS_DIR/python`) decodes
//! each body under its writer schema, in a Python process.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn python_path() -> PathBuf {
    std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"))
        .join("python")
}

/// Decodes each (writer schema text, Avro body) with fastavro; the records
/// as JSON, or what fastavro said of the first it could not read.
pub fn fastavro_decode(records: &[(String, Vec<u8>)]) -> Result<Vec<serde_json::Value>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/fastavro_decode.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", python_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut input = String::new();
    for (schema, body) in records {
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        input.push_str(&serde_json::json!({"schema": schema, "value": hex}).to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect()
}

/// An Iceberg table read by pyiceberg (installed by `.ci/install` under
/// `$WALHOUSE_TOOLS_DIR/iceberg`) from the SQLite catalog in `dir`: its
/// schema, rows (values as text) and snapshots' summary properties.
pub fn pyiceberg_read(dir: &std::path::Path, table: &str) -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/iceberg_read.py");
    let tools = std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"));
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(table)
        .env("PYTHONPATH", tools.join("iceberg"))
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The rows of `sql` (in which `t` is `table`) as DuckDB's iceberg
/// extension reads them from the catalog in `dir` (installed by
/// `.ci/install` under `$WALHOUSE_TOOLS_DIR/iceberg-duckdb`), each value
/// as text.
pub fn duckdb_iceberg_query(dir: &std::path::Path, table: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/iceberg_duckdb.py");
    let tools = std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"));
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(table)
        .arg(sql)
        .env("PYTHONPATH", tools.join("iceberg-duckdb"))
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}
