//! Debezium itself, run beside walhouse on the same Postgres and broker:
//! the oracle of the Debezium format. Debezium 3.6.1.Final on Kafka
//! Connect standalone (JSON with Connect schemas), read back from the
//! broker.

use walhouse_test_support as support;

use std::time::Duration;

use serde_json::Value;
use support::debezium::Debezium;
use support::kafka::{read_topic, Broker};
use support::postgres::PgServer;

const LIMIT: Duration = Duration::from_secs(120);

/// The Connect schema of `field` in a record's `after` struct.
fn field_schema<'v>(record: &'v Value, field: &str) -> &'v Value {
    let after = record["schema"]["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == "after"))
        .expect("an after field");
    after["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == field))
        .unwrap_or_else(|| panic!("no {field} in {after}"))
}

/// The harness works end to end: Debezium snapshots a table and streams a
/// change into the tests' broker, and its records carry the semantic
/// types the Debezium format must reproduce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_snapshots_and_streams_into_the_tests_broker() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("shop");
    let broker = Broker::start();
    let sql = pg.client("shop").await;
    sql.batch_execute(
        "CREATE TABLE edge (id int PRIMARY KEY, tstz timestamptz, iv interval, n numeric, m money, u uuid); \
         INSERT INTO edge VALUES (1, '2024-01-31 13:45:00.5+00', '1 day 02:00:00', 3.14159, 12.34, \
           'a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a');",
    )
    .await
    .expect("source");
    let dbz = Debezium::start(&broker.bootstrap(), &pg, "shop", "dbz", &[]);
    sql.batch_execute("INSERT INTO edge (id) VALUES (2)")
        .await
        .expect("change");
    let (bootstrap, topic) = (broker.bootstrap(), "dbz.public.edge".to_string());
    let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, 2, LIMIT))
        .await
        .expect("reader");
    assert_eq!(records.len(), 2, "Connect's log:\n{}", dbz.log());
    let values: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().expect("value")).expect("JSON"))
        .collect();
    let ops: Vec<&str> = values
        .iter()
        .map(|v| v["payload"]["op"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(ops, ["r", "c"]);
    let first = &values[0];
    assert_eq!(field_schema(first, "tstz")["name"], "io.debezium.time.ZonedTimestamp");
    assert_eq!(field_schema(first, "iv")["name"], "io.debezium.time.MicroDuration");
    assert_eq!(
        field_schema(first, "n")["name"],
        "io.debezium.data.VariableScaleDecimal"
    );
    assert_eq!(field_schema(first, "u")["name"], "io.debezium.data.Uuid");
    assert_eq!(first["payload"]["after"]["tstz"], "2024-01-31T13:45:00.500000Z");
    assert_eq!(first["payload"]["after"]["iv"], 93_600_000_000i64);
    assert_eq!(first["payload"]["source"]["connector"], "postgresql");

    // What the AvroConverter would register for this envelope: the target
    // of the Debezium format, field by field.
    let avro = support::avro_data::from_connect(&first["schema"]);
    assert_eq!(avro["name"], "dbz.public.edge.Envelope");
    let fields: Vec<&str> = avro["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "before",
            "after",
            "source",
            "transaction",
            "op",
            "ts_ms",
            "ts_us",
            "ts_ns"
        ]
    );
    let after = &avro["fields"][1]["type"][1];
    assert_eq!(after["name"], "dbz.public.edge.Value");
    let tstz = after["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "tstz"))
        .expect("tstz");
    assert_eq!(
        tstz["type"],
        serde_json::json!(["null", {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"}])
    );
    assert_eq!(
        avro["fields"][2]["type"]["connect.name"],
        "io.debezium.connector.postgresql.Source"
    );
}
