//! Poison pills: one bad record, value or schema costs only its own
//! record. Each test asserts what the issue of record asks: the sink keeps
//! running, the record is in `walhouse.dead_letters` with the reason, and
//! the records around it land. Both warehouse targets where both apply;
//! Postgres 15 or 18, an Apache Kafka broker, every assertion read back.

use walhouse_test_support as support;

use support::postgres::PgServer;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::{isolate, Batch, Cell, OffsetUpdate, Origin, TableRef, TableRows, Warehouse};

/// The batch of the warehouse-level test: three rows of `t (id, amount
/// DECIMAL(5,2))`, the second one nine digits wide.
fn batch_with_a_too_wide_decimal() -> Batch {
    let decimal = |unscaled| Cell::Decimal {
        unscaled,
        precision: 5,
        scale: 2,
    };
    let origin = |offset| Origin {
        source: "cdc",
        topic: Some("t".into()),
        partition: Some(0),
        offset: Some(offset),
        raw: Some(vec![offset as u8]),
        ..Origin::default()
    };
    Batch {
        tables: vec![(
            TableRef::new("raw_public", "t"),
            TableRows {
                columns: vec!["id".into(), "amount".into()],
                rows: vec![
                    vec![Cell::Long(1), decimal(12345)],
                    vec![Cell::Long(2), decimal(123_456_789)],
                    vec![Cell::Long(3), decimal(-99)],
                ],
                origins: (0..3).map(origin).collect(),
            },
        )],
        dead_letters: Vec::new(),
        offsets: vec![OffsetUpdate {
            topic: "t".into(),
            partition: 0,
            from: None,
            next: 3,
        }],
        file: None,
    }
}

/// Writes the batch on `w` and checks what landed: the two good rows, the
/// bad one as a dead letter with the target's message, the offset moved.
async fn refused_value_is_set_aside<W: Warehouse>(w: &mut W) {
    let mut statements = w.dialect().state_tables();
    statements.push("CREATE SCHEMA IF NOT EXISTS raw_public".into());
    statements.push("CREATE TABLE raw_public.t (id BIGINT, amount DECIMAL(5,2))".into());
    w.execute(&statements).await.expect("tables");
    let mut batch = batch_with_a_too_wide_decimal();
    let set_aside = isolate::write(w, "g", &mut batch).await.expect("the batch is written");
    assert_eq!(set_aside, 1);
    let rows = w
        .query_text("SELECT id, amount FROM raw_public.t ORDER BY id")
        .await
        .expect("rows");
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("123.45".into())],
            vec![Some("3".into()), Some("-0.99".into())]
        ]
    );
    let dead = w
        .query_text(
            "SELECT \"offset\", error, CASE WHEN raw IS NULL THEN 'no' ELSE 'yes' END FROM walhouse.dead_letters",
        )
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_deref(), Some("1"));
    let error = dead[0][1].clone().unwrap_or_default();
    assert!(error.contains("the warehouse refused this row"), "{error}");
    assert_eq!(dead[0][2].as_deref(), Some("yes"));
    let offsets = w.offsets("g").await.expect("offsets");
    assert_eq!(offsets.get(&("t".to_string(), 0)), Some(&3));
}

/// Without isolation the whole batch (and every restart) failed on the
/// one row; with it, the row is found by halves and set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_target_refuses_is_set_aside_on_both_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut duck = DuckDbWarehouse::open(&dir.path().join("w.duckdb")).expect("duckdb");
    refused_value_is_set_aside(&mut duck).await;
    let pg = PgServer::start();
    let url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&url).expect("url"))
        .await
        .expect("warehouse");
    refused_value_is_set_aside(&mut w).await;
}
