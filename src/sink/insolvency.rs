//! The daily CSV of insolvent companies into `raw.insolvencies`.
//!
//! A file is identified by its SHA-256: loading the same content again adds
//! nothing, and the record of the load is written in the same transaction
//! as its rows. The header must name `organization_id` and
//! `insolvency_date`; other columns are kept in `extra` (JSON). A line that
//! cannot be a row goes to the dead-letter table with its file and line.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::avro::value::iso_timestamp_micros;
use crate::warehouse::{
    Batch, Cell, ColumnDef, DeadLetter, FileLoad, Origin, SqlType, TableDef, TableRef, TableRows, Warehouse,
    WarehouseError,
};

pub const SCHEMA: &str = "raw";
pub const TABLE: &str = "insolvencies";

#[derive(Debug, thiserror::Error)]
pub enum InsolvencyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: no .csv files in this directory")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// What loading one file did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    pub file: String,
    pub rows: i64,
    pub dead_letters: i64,
    /// Loaded before (same content): nothing was added.
    pub already_loaded: bool,
}

pub fn table_def() -> TableDef {
    TableDef {
        table: TableRef::new(SCHEMA, TABLE),
        columns: vec![
            ColumnDef::new("organization_id", SqlType::Uuid),
            ColumnDef::new("insolvency_ts", SqlType::TimestampTz),
            ColumnDef::new("extra", SqlType::Json),
            ColumnDef::new("_file", SqlType::Text),
            ColumnDef::new("_line", SqlType::BigInt),
            ColumnDef::new("_file_sha256", SqlType::Text),
            ColumnDef::new("_ingested_at", SqlType::TimestampTz),
        ],
    }
}

/// The `.csv` files of `path` (itself if a file), in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, InsolvencyError> {
    let read = |source| InsolvencyError::Read {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(read)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(InsolvencyError::Empty { path: path.to_owned() });
    }
    Ok(out)
}

/// Loads one file (once).
pub async fn load_file<W: Warehouse>(warehouse: &mut W, path: &Path) -> Result<LoadReport, InsolvencyError> {
    let bytes = std::fs::read(path).map_err(|source| InsolvencyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    let file = path.display().to_string();
    if warehouse.file_loaded(&sha256).await? {
        return Ok(LoadReport {
            file,
            rows: 0,
            dead_letters: 0,
            already_loaded: true,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| InsolvencyError::Format {
        path: path.to_owned(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let parsed =
        parse(&text, &file, &sha256, super::clock::now_micros()).map_err(|message| InsolvencyError::Format {
            path: path.to_owned(),
            message,
        })?;
    // Encoded for the warehouse now: a value it cannot hold is a dead letter.
    let mut rows = TableRows::new(warehouse.dialect(), table_def().columns)?;
    let mut dead = parsed.dead;
    for (cells, origin) in parsed.rows.into_iter().zip(parsed.origins) {
        match rows.push(&cells) {
            Ok(()) => rows.origins.push(origin.borrow()),
            Err(error) => dead.push(DeadLetter { origin, error }),
        }
    }
    rows.seal()?;
    let report = LoadReport {
        file: file.clone(),
        rows: rows.len() as i64,
        dead_letters: dead.len() as i64,
        already_loaded: false,
    };
    let batch = Batch {
        tables: vec![(TableRef::new(SCHEMA, TABLE), rows)],
        dead_letters: dead,
        offsets: Vec::new(),
        file: Some(FileLoad {
            sha256,
            file,
            rows: report.rows,
            dead_letters: report.dead_letters,
        }),
    };
    let mut batch = batch;
    let set_aside = crate::warehouse::isolate::write(warehouse, "", &mut batch).await? as i64;
    Ok(LoadReport {
        rows: report.rows - set_aside,
        dead_letters: report.dead_letters + set_aside,
        ..report
    })
}

struct Parsed {
    rows: Vec<Vec<Cell>>,
    /// Each row's line, should the warehouse refuse it.
    origins: Vec<Origin>,
    dead: Vec<DeadLetter>,
}

/// What loading `text` would give, without a warehouse: (rows, dead
/// letters), or why the whole file is refused. For dry runs and the fuzzer.
pub fn inspect(text: &str) -> Result<(usize, usize), String> {
    let parsed = parse(text, "-", "", 0)?;
    Ok((parsed.rows.len(), parsed.dead.len()))
}

fn parse(text: &str, file: &str, sha256: &str, now: i64) -> Result<Parsed, String> {
    let mut records = records(text);
    let Some((_, header)) = records.next() else {
        return Err("empty file: a header with organization_id and insolvency_date is needed".into());
    };
    let header = header.map_err(|e| format!("header: {e}"))?;
    let header: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let find = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "the header has no {name} column (found: {}); the file needs organization_id and insolvency_date",
                header.join(", ")
            )
        })
    };
    let (org_at, date_at) = (find("organization_id")?, find("insolvency_date")?);
    let mut out = Parsed {
        rows: Vec::new(),
        origins: Vec::new(),
        dead: Vec::new(),
    };
    for (line, record) in records {
        let raw_line = |fields: &[String]| fields.join(",");
        let fields = match record {
            Ok(f) if f.len() == 1 && f[0].trim().is_empty() => continue,
            Ok(f) => f,
            Err(e) => {
                out.dead.push(dead(file, line, None, e));
                continue;
            }
        };
        let row = (|| {
            if fields.len() != header.len() {
                return Err(format!("{} fields where the header has {}", fields.len(), header.len()));
            }
            let org = uuid(fields[org_at].trim())
                .ok_or_else(|| format!("organization_id {:?} is not a UUID", fields[org_at]))?;
            let ts = iso_timestamp_micros(&fields[date_at]).ok_or_else(|| {
                format!(
                    "insolvency_date {:?} is not an ISO-8601 date or timestamp",
                    fields[date_at]
                )
            })?;
            let extra: Map<String, Json> = header
                .iter()
                .zip(&fields)
                .enumerate()
                .filter(|(i, _)| *i != org_at && *i != date_at)
                .map(|(_, (h, v))| (h.clone(), Json::String(v.clone())))
                .collect();
            Ok(vec![
                Cell::Uuid(org),
                Cell::TimestampTz(ts),
                Cell::Text(Json::Object(extra).to_string()),
                Cell::Text(file.to_owned()),
                Cell::Long(line as i64),
                Cell::Text(sha256.to_owned()),
                Cell::TimestampTz(now),
            ])
        })();
        match row {
            Ok(r) => {
                out.rows.push(r);
                out.origins.push(origin(file, line, Some(raw_line(&fields))));
            }
            Err(e) => out.dead.push(dead(file, line, Some(raw_line(&fields)), e)),
        }
    }
    Ok(out)
}

fn dead(file: &str, line: usize, raw: Option<String>, error: String) -> DeadLetter {
    DeadLetter {
        origin: origin(file, line, raw),
        error,
    }
}

fn origin(file: &str, line: usize, raw: Option<String>) -> Origin {
    Origin {
        source: "insolvency_csv",
        file: Some(file.to_owned()),
        line: Some(line as i64),
        raw: raw.map(String::into_bytes),
        ..Origin::default()
    }
}

/// A canonical lower-case UUID, if `s` is one.
fn uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then(|| s.to_ascii_lowercase())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 4180 records with the line each starts on: quoted fields may hold
/// commas, doubled quotes and line breaks.
fn records(text: &str) -> impl Iterator<Item = (usize, Result<Vec<String>, String>)> + '_ {
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    std::iter::from_fn(move || {
        chars.peek()?;
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut error = None;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    error = Some("a quoted field is not closed".to_string());
                }
                fields.push(std::mem::take(&mut field));
                break;
            };
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                (false, '"') if field.is_empty() => quoted = true,
                (false, ',') => fields.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {}
                (false, '\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                (false, c) => field.push(c),
            }
        }
        Some((start, error.map_or(Ok(fields), Err)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_keep_their_first_line() {
        let text = "a,b\n1,\"x,\"\"y\"\"\nz\"\r\n2,3\n";
        let got: Vec<(usize, Vec<String>)> = records(text).map(|(l, r)| (l, r.expect("record"))).collect();
        assert_eq!(
            got,
            vec![
                (1, vec!["a".into(), "b".into()]),
                (2, vec!["1".into(), "x,\"y\"\nz".into()]),
                (4, vec!["2".into(), "3".into()]),
            ]
        );
    }

    #[test]
    fn bad_lines_are_dead_letters_with_file_and_line() {
        let text = "organization_id,insolvency_date,court\n\
                    00000000-0000-4000-8000-000000000001,2024-03-01,Paris\n\
                    not-a-uuid,2024-03-01,Lyon\n\
                    00000000-0000-4000-8000-000000000002,someday,Nice\n\
                    00000000-0000-4000-8000-000000000003,2024-03-02T10:00:00Z\n";
        let p = parse(text, "f.csv", "abc", 0).expect("parsed");
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0][2], Cell::Text(r#"{"court":"Paris"}"#.into()));
        let lines: Vec<(Option<i64>, &str)> = p.dead.iter().map(|d| (d.origin.line, d.error.as_str())).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0, Some(3));
        assert!(lines[0].1.contains("not a UUID"));
        assert!(lines[1].1.contains("not an ISO-8601"));
        assert!(lines[2].1.contains("2 fields where the header has 3"));
    }

    #[test]
    fn a_file_without_the_needed_columns_is_refused() {
        let err = parse("id,date\n1,2\n", "f.csv", "abc", 0).err().expect("refused");
        assert!(err.contains("organization_id"), "{err}");
    }
}
