//! The Iceberg target's tables as another reader sees them: walhouse
//! makes a table with every column type, appends, widens it and appends
//! again; pyiceberg reads the rows, the schema and each commit's summary
//! properties back from the catalog, and DuckDB's iceberg extension
//! queries the table (issue 23, first part: the sink is
//! not wired to this target yet).

use walhouse_test_support as support;

use std::collections::HashMap;

use serde_json::{json, Value};
use walhouse::warehouse::arrow::ArrowRows;
use walhouse::warehouse::iceberg::positions::{property, Positions};
use walhouse::warehouse::iceberg::IcebergWarehouse;
use walhouse::warehouse::{Cell, ColumnDef, SqlType, TableDef, TableRef};

fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new("id", SqlType::BigInt),
        ColumnDef::new("name", SqlType::Text),
        ColumnDef::new(
            "amount",
            SqlType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        ColumnDef::new("at", SqlType::TimestampTz),
        ColumnDef::new("local", SqlType::Timestamp),
        ColumnDef::new("day", SqlType::Date),
        ColumnDef::new("clock", SqlType::Time),
        ColumnDef::new("u", SqlType::Uuid),
        ColumnDef::new("doc", SqlType::Json),
        ColumnDef::new("raw", SqlType::Bytes),
        ColumnDef::new("flag", SqlType::Boolean),
        ColumnDef::new("small", SqlType::Integer),
        ColumnDef::new("r", SqlType::Real),
        ColumnDef::new("d", SqlType::Double),
    ]
}

fn decimal(unscaled: i128) -> Cell {
    Cell::Decimal {
        unscaled,
        precision: 12,
        scale: 2,
    }
}

#[tokio::test]
async fn pyiceberg_reads_every_type_and_each_commits_properties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = IcebergWarehouse::open(dir.path()).await.expect("catalog");
    let table = TableRef::new("raw_public", "every_type");
    let def = TableDef {
        table: table.clone(),
        columns: columns(),
    };
    assert_eq!(w.columns(&table).await.expect("columns"), None);
    w.create_table(&def).await.expect("create");

    let mut rows = ArrowRows::new(&def.columns).expect("rows");
    rows.push(&[
        Cell::Long(1),
        Cell::Text("Zoë 🙂".into()),
        decimal(999_999_999_999),
        Cell::TimestampTz(1_700_000_000_123_456),
        Cell::Timestamp(-1),
        Cell::Date(-719_162),
        Cell::Time(86_399_999_999),
        Cell::Uuid("00112233-4455-6677-8899-aabbccddeeff".into()),
        Cell::Text("{\"a\": [1, 2.50]}".into()),
        Cell::Bytes(vec![0, 255, 16]),
        Cell::Bool(true),
        Cell::Int(i32::MIN),
        Cell::Float(1.5),
        Cell::Double(-0.1),
    ])
    .expect("row 1");
    let mut nulls = vec![Cell::Null; def.columns.len()];
    nulls[0] = Cell::Long(2);
    nulls[2] = decimal(-1);
    rows.push(&nulls).expect("row 2");
    rows.seal().expect("seal");
    let mut positions = Positions::default();
    positions.advance("walhouse.public.every_type", 0, 2);
    let first = HashMap::from([(property("g"), positions.to_json())]);
    assert_eq!(w.append(&table, &rows, first).await.expect("append"), 1);

    let mut wider = def.columns.clone();
    wider.push(ColumnDef::new("added", SqlType::Text));
    w.add_columns(&table, &wider[def.columns.len()..]).await.expect("widen");
    let known = w.columns(&table).await.expect("columns").expect("exists");
    assert_eq!(known.last(), Some(&("added".to_owned(), "string".to_owned())));
    let mut rows = ArrowRows::new(&wider).expect("rows");
    let mut later = vec![Cell::Null; wider.len()];
    later[0] = Cell::Long(3);
    later[wider.len() - 1] = Cell::Text("new".into());
    rows.push(&later).expect("row 3");
    rows.seal().expect("seal");
    positions.advance("walhouse.public.every_type", 0, 3);
    let second = HashMap::from([(property("g"), positions.to_json())]);
    w.append(&table, &rows, second).await.expect("append");

    let read = support::python::pyiceberg_read(dir.path(), "raw_public.every_type").expect("pyiceberg reads");
    let types: Vec<(String, String)> = serde_json::from_value(read["schema"].clone()).expect("schema");
    let wanted: Vec<(&str, &str)> = vec![
        ("id", "long"),
        ("name", "string"),
        ("amount", "decimal(12, 2)"),
        ("at", "timestamptz"),
        ("local", "timestamp"),
        ("day", "date"),
        ("clock", "time"),
        ("u", "uuid"),
        ("doc", "string"),
        ("raw", "binary"),
        ("flag", "boolean"),
        ("small", "int"),
        ("r", "float"),
        ("d", "double"),
        ("added", "string"),
    ];
    assert_eq!(
        types,
        wanted
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let mut got: Vec<Value> = serde_json::from_value(read["rows"].clone()).expect("rows");
    got.sort_by_key(|r| r["id"].as_str().and_then(|s| s.parse::<i64>().ok()));
    assert_eq!(
        got[0],
        json!({
            "id": "1", "name": "Zoë 🙂", "amount": "9999999999.99", "at": "2023-11-14T22:13:20.123456+00:00",
            "local": "1969-12-31T23:59:59.999999", "day": "0001-01-01", "clock": "23:59:59.999999",
            "u": "00112233-4455-6677-8899-aabbccddeeff", "doc": "{\"a\": [1, 2.50]}", "raw": "00ff10",
            "flag": "True", "small": "-2147483648", "r": "1.5", "d": "-0.1", "added": null
        })
    );
    assert_eq!(got[1]["amount"], "-0.01");
    assert_eq!(got[1]["name"], Value::Null);
    assert_eq!(
        (got[2]["id"].as_str(), got[2]["added"].as_str()),
        (Some("3"), Some("new"))
    );
    let committed: Vec<Option<&str>> = read["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["walhouse.positions.g"].as_str())
        .collect();
    assert_eq!(
        committed,
        [
            Some("{\"walhouse.public.every_type\":{\"0\":2}}"),
            Some("{\"walhouse.public.every_type\":{\"0\":3}}")
        ]
    );
    let duck = support::python::duckdb_iceberg_query(
        dir.path(),
        "raw_public.every_type",
        "SELECT count(*), sum(amount), max(\"at\"), min(u), count(added) FROM t",
    )
    .expect("DuckDB's iceberg extension reads");
    assert_eq!(
        duck,
        [[
            Some("3".to_owned()),
            Some("9999999999.98".to_owned()),
            Some("2023-11-14 22:13:20.123456+00:00".to_owned()),
            Some("00112233-4455-6677-8899-aabbccddeeff".to_owned()),
            Some("1".to_owned()),
        ]]
    );
    let summary = w.snapshot_properties(&table).await.expect("properties");
    assert_eq!(Positions::from_summary(&summary, "g"), Ok(positions));
}
