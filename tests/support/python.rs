//! Records read the way Confluent's Python client reads them: fastavro
//! (installed by `.ci/install` under `$WALHOUSE_TOOLS_DIR/python`) decodes
//! each body under its writer schema, in a Python process.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Decodes each (writer schema text, Avro body) with fastavro; the records
/// as JSON, or what fastavro said of the first it could not read.
pub fn fastavro_decode(records: &[(String, Vec<u8>)]) -> Result<Vec<serde_json::Value>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/fastavro_decode.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", tools("python"))
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

/// `$WALHOUSE_TOOLS_DIR/<name>`, where `.ci/install` puts a Python
/// package set.
pub fn tools(name: &str) -> PathBuf {
    std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"))
        .join(name)
}

/// Runs `tests/python/<script>` with `args` over the packages in `tools`,
/// and reads the JSON it prints.
fn run_script(script: &str, args: &[&std::ffi::OsStr], packages: &str) -> Result<serde_json::Value, String> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../python")).join(script);
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .env("PYTHONPATH", tools(packages))
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// An Iceberg table read by pyiceberg from the SQLite catalog in `dir`:
/// its location, schema, rows (values as text) and snapshots' summary
/// properties.
pub fn pyiceberg_read(dir: &std::path::Path, table: &str) -> Result<serde_json::Value, String> {
    run_script("iceberg_read.py", &[dir.as_os_str(), table.as_ref()], "iceberg")
}

/// The same from the SQL catalog pyiceberg's `properties` name (`uri`,
/// `s3.endpoint`, …).
pub fn pyiceberg_read_catalog(properties: &serde_json::Value, table: &str) -> Result<serde_json::Value, String> {
    let properties = properties.to_string();
    run_script("iceberg_read.py", &[properties.as_ref(), table.as_ref()], "iceberg")
}

/// The rows of `sql` (in which `t` is `table`) as DuckDB's iceberg
/// extension reads them from the catalog in `dir`, each value as text.
pub fn duckdb_iceberg_query(dir: &std::path::Path, table: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let rows = run_script(
        "iceberg_duckdb.py",
        &[dir.as_os_str(), table.as_ref(), sql.as_ref()],
        "iceberg-duckdb",
    )?;
    serde_json::from_value(rows).map_err(|e| e.to_string())
}

/// Runs `script` (a DuckDB script: `walhouse-sink duckdb-views`' output)
/// in DuckDB with its iceberg extension, then each of `queries`: their
/// rows, each value as text.
pub fn duckdb_script_queries(script: &str, queries: &[&str]) -> Result<Vec<Vec<Vec<Option<String>>>>, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), script).map_err(|e| e.to_string())?;
    let queries = serde_json::to_string(queries).map_err(|e| e.to_string())?;
    let rows = run_script(
        "duckdb_script.py",
        &[file.path().as_os_str(), queries.as_ref()],
        "iceberg-duckdb",
    )?;
    serde_json::from_value(rows).map_err(|e| e.to_string())
}
