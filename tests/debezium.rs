//! Debezium itself, run beside walhouse on the same Postgres and broker:
//! the oracle of the Debezium format. Debezium 3.6.1.Final on Kafka
//! Connect standalone (JSON with Connect schemas), read back from the
//! broker.

use walhouse_test_support as support;

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::command::CaptureCommand;
use support::debezium::Debezium;
use support::kafka::{read_all, read_topic, wait_for_count, Broker};
use support::postgres::PgServer;
use support::registry::TestRegistry;
use walhouse::capture::format::debezium::{
    avro_schema, connect_type, encode_value, envelope_schema, key_record, value_record, ConnectType,
};
use walhouse::postgres::catalog::load_type_infos;
use walhouse::registry::{split_wire, Registry, RegistryConfig};

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

/// Inserts ids `from..=to` into `orders`, ten per transaction.
async fn insert_orders(sql: &tokio_postgres::Client, from: i32, to: i32) {
    let mut a = from;
    while a <= to {
        let b = (a + 9).min(to);
        sql.batch_execute(&format!(
            "INSERT INTO orders SELECT g, g FROM generate_series({a}, {b}) g"
        ))
        .await
        .expect("insert");
        a = b + 1;
    }
}

/// Decodes walhouse's records (Confluent wire format) into (id, source.lsn, op).
async fn walhouse_changes(registry_url: &str, records: &[support::kafka::Record]) -> Vec<(i64, i64, String)> {
    let registry = Registry::new(&RegistryConfig {
        url: registry_url.into(),
        ..Default::default()
    })
    .expect("registry");
    let mut out = Vec::new();
    for r in records {
        let Some(bytes) = r.value.as_deref() else { continue };
        let (id, mut body) = split_wire(bytes).expect("wire format");
        let schema = apache_avro::Schema::parse_str(&registry.schema(id).await.expect("schema")).expect("parses");
        let v = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .expect("reader")
            .read_value(&mut body)
            .expect("decodes");
        let json: Value = v.try_into().expect("as JSON");
        let id = json["after"]["id"]
            .as_i64()
            .or_else(|| json["after"]["int"]["id"].as_i64());
        let lsn = json["source"]["lsn"]
            .as_i64()
            .or_else(|| json["source"]["lsn"]["long"].as_i64());
        out.push((
            id.unwrap_or(-1),
            lsn.unwrap_or(-1),
            json["op"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

/// The migration path off Debezium: Debezium streams, is stopped, and
/// walhouse-capture starts on Debezium's own slot and publication with
/// `--snapshot-mode never`. The stream continues with no gap and no
/// re-snapshot; a change both delivered is allowed only from Debezium's
/// last flushed LSN on, and counted. walhouse writes the Debezium format,
/// so Debezium's consumers read on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walhouse_takes_over_debeziums_slot_without_gap_or_resnapshot() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("shop");
    let broker = Broker::start();
    let registry = TestRegistry::start().await;
    let sql = pg.client("shop").await;
    sql.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, v int); INSERT INTO orders VALUES (1, 1);")
        .await
        .expect("source");
    let mut dbz = Debezium::start(&broker.bootstrap(), &pg, "shop", "dbz", &[]);
    insert_orders(&sql, 2, 200).await;
    let bootstrap = broker.bootstrap();
    let held = tokio::task::spawn_blocking(move || {
        wait_for_count(&bootstrap, "dbz.public.orders", 200, Duration::from_secs(120))
    })
    .await
    .expect("counter");
    assert_eq!(held, 200, "Connect's log:\n{}", dbz.log());
    // An operator's stop: Connect flushes its offsets, Debezium confirms.
    dbz.stop();
    let flushed = pg.confirmed_flush_when_inactive("shop", "dbz").await;
    // Changes made while nothing reads the slot.
    insert_orders(&sql, 201, 300).await;

    let capture = CaptureCommand::from(&pg.url("walhouse_scram", "shop"))
        .into_kafka(&broker.bootstrap(), &registry.url, "wh")
        .with("--format", "debezium")
        .with("--slot", "dbz")
        .with("--publication", "dbz_pub")
        .with("--snapshot-mode", "never")
        .start();
    assert!(
        pg.wait_for_slot("shop", "dbz", true, LIMIT).await,
        "walhouse streams from Debezium's slot"
    );
    insert_orders(&sql, 301, 350).await;
    assert!(
        pg.wait_confirmed("shop", "dbz", LIMIT).await,
        "walhouse confirms past the last change"
    );
    capture.stop().await;

    let dbz_records = read_all(&broker.bootstrap(), "dbz.public.orders", LIMIT);
    let dbz_ids: BTreeSet<i64> = dbz_records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .filter_map(|v| serde_json::from_slice::<Value>(v).ok())
        .filter_map(|v| v["payload"]["after"]["id"].as_i64())
        .collect();
    let wh = walhouse_changes(&registry.url, &read_all(&broker.bootstrap(), "wh.public.orders", LIMIT)).await;
    assert!(wh.iter().all(|(_, _, op)| op != "r"), "no re-snapshot: {wh:?}");
    let wh_ids: BTreeMap<i64, i64> = wh.iter().map(|(id, lsn, _)| (*id, *lsn)).collect();
    assert_eq!(wh_ids.len(), wh.len(), "walhouse delivered each change once");
    let all: BTreeSet<i64> = dbz_ids.iter().copied().chain(wh_ids.keys().copied()).collect();
    assert_eq!(
        all,
        (1..=350).collect::<BTreeSet<i64>>(),
        "no gap between Debezium and walhouse"
    );
    let flushed = flushed
        .parse::<walhouse::postgres::Lsn>()
        .expect("confirmed_flush_lsn")
        .0 as i64;
    let both: Vec<(i64, i64)> = wh_ids
        .iter()
        .filter(|(id, _)| dbz_ids.contains(id))
        .map(|(id, lsn)| (*id, *lsn))
        .collect();
    // Debezium confirms the LSN of the last change it processed, which may
    // lie inside a transaction; Postgres then sends that transaction again
    // from that change on. So the change at the flushed LSN itself comes
    // twice, and nothing before it.
    assert!(
        both.iter().all(|(_, lsn)| *lsn >= flushed),
        "changes delivered twice must lie at or past Debezium's flushed LSN {flushed}: {both:?}"
    );
    println!(
        "takeover: Debezium delivered {} changes, walhouse {}, both {} (from Debezium's flushed LSN on)",
        dbz_ids.len(),
        wh_ids.len(),
        both.len()
    );
}

/// Starts Debezium on database `shop` and returns the first record of
/// `dbz.public.<table>` (JSON with its Connect schema), and Debezium.
async fn first_debezium_record(pg: &PgServer, broker: &Broker, table: &str) -> (Value, Option<Vec<u8>>, Debezium) {
    let dbz = Debezium::start(&broker.bootstrap(), pg, "shop", "dbz", &[]);
    let (bootstrap, topic) = (broker.bootstrap(), format!("dbz.public.{table}"));
    let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, 1, LIMIT))
        .await
        .expect("reader");
    assert_eq!(records.len(), 1, "Connect's log:\n{}", dbz.log());
    let record: Value = serde_json::from_slice(records[0].value.as_deref().expect("value")).expect("JSON");
    (record, records[0].key.clone(), dbz)
}

/// The `after` field's schema of a Debezium record.
fn after_schema(record: &Value) -> Value {
    record["schema"]["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == "after"))
        .expect("after")
        .clone()
}

/// A column as the catalog describes it: name, type, modifier, NOT NULL.
type Column = (String, u32, i32, bool);

/// `table`'s columns, with the type facts of their types loaded.
async fn columns_of(
    sql: &tokio_postgres::Client,
    table: &str,
) -> (
    Vec<Column>,
    std::collections::HashMap<u32, walhouse::postgres::catalog::TypeInfo>,
) {
    let rows = sql
        .query(
            "SELECT attname::text, atttypid::oid, atttypmod, attnotnull FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .expect("columns");
    let columns: Vec<Column> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let oids: Vec<u32> = columns.iter().map(|c| c.1).collect();
    let infos = load_type_infos(sql, &oids)
        .await
        .expect("type infos")
        .into_iter()
        .collect();
    (columns, infos)
}

/// `t` as JsonConverter writes a Connect schema (without `optional` and
/// `field`, which belong to the column, not its type).
fn connect_json(t: &ConnectType) -> Value {
    let mut o = serde_json::Map::new();
    let ty = match t.ty {
        "float32" => "float",
        "float64" => "double",
        other => other,
    };
    o.insert("type".into(), Value::from(ty));
    if let Some(n) = t.name {
        o.insert("name".into(), Value::from(n));
    }
    if let Some(v) = t.version {
        o.insert("version".into(), Value::from(v));
    }
    if let Some(d) = t.doc {
        o.insert("doc".into(), Value::from(d));
    }
    if !t.parameters.is_empty() {
        let p: serde_json::Map<String, Value> = t
            .parameters
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.clone())))
            .collect();
        o.insert("parameters".into(), Value::Object(p));
    }
    match t.ty {
        "array" => {
            let (_, item, optional) = &t.fields[0];
            let mut item = connect_json(item);
            item["optional"] = Value::from(*optional);
            o.insert("items".into(), item);
        }
        "struct" => {
            let fields: Vec<Value> = t
                .fields
                .iter()
                .map(|(name, f, optional)| {
                    let mut f = connect_json(f);
                    f["optional"] = Value::from(*optional);
                    f["field"] = Value::from(*name);
                    f
                })
                .collect();
            o.insert("fields".into(), Value::Array(fields));
        }
        _ => {}
    }
    Value::Object(o)
}

/// Every built-in type the Debezium format maps, one column each: the
/// Connect type walhouse gives each column is the one Debezium 3.6.1 gives
/// it, in name, version, parameters, doc and nested fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debeziums_connect_type_of_every_column_is_reproduced() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("shop");
    let broker = Broker::start();
    let sql = pg.client("shop").await;
    let xml = if support::postgres::built_with("--with-libxml") {
        ", x xml"
    } else {
        ""
    };
    sql.batch_execute(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE DOMAIN posint AS int CHECK (VALUE > 0); \
         CREATE TABLE edge (id int PRIMARY KEY, i2 smallint, i8 bigint, r real, f8 double precision, b boolean, \
           n38 numeric(38,10), n52 numeric(5,2), nfree numeric, m money, txt text, vc varchar(10), ch char(3), \
           by bytea, d date, t time, t0 time(0), t3 time(3), t4 time(4), ttz timetz, ts timestamp, ts0 timestamp(0), \
           ts3 timestamp(3), ts5 timestamp(5), tstz timestamptz, iv interval, u uuid, j json, jb jsonb, e mood, \
           b1 bit(1), bt bit(3), vb varbit, vb5 varbit(5), arr int[], tarr text[], ip inet, cidr cidr, \
           mac macaddr, pt point, rng int4range, dom posint{xml}); \
         INSERT INTO edge (id) VALUES (1);"
    ))
    .await
    .expect("source");
    let (record, key, _dbz) = first_debezium_record(&pg, &broker, "edge").await;
    let after = after_schema(&record);
    let (columns, infos) = columns_of(&sql, "edge").await;
    let lookup = |oid: u32| infos.get(&oid);
    let mut compared = 0;
    let mut ours_all = Vec::new();
    for (name, oid, typmod, not_null) in &columns {
        let (oid, typmod) = (*oid, *typmod);
        let mut theirs = after["fields"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["field"] == name.as_str()))
            .unwrap_or_else(|| panic!("Debezium has no column {name}"))
            .clone();
        let theirs = theirs.as_object_mut().expect("object");
        theirs.remove("optional");
        theirs.remove("field");
        let t = connect_type(oid, typmod, &lookup);
        let ours = connect_json(&t);
        assert_eq!(ours, Value::Object(theirs.clone()), "column {name}");
        compared += 1;
        ours_all.push((name.clone(), t, !not_null));
    }
    assert_eq!(compared, columns.len());
    println!("{compared} columns: walhouse's Connect type equals Debezium's for each");

    // And as Avro: the row record walhouse writes is what the AvroConverter
    // registers for Debezium's (AvroData's rules, from its source).
    let theirs = support::avro_data::from_connect(&after);
    let ours = support::avro_data::expand(&value_record("dbz.public.edge.Value", &ours_all));
    let (ours_fields, theirs_fields) = (
        ours["fields"].as_array().expect("fields"),
        theirs[1]["fields"].as_array().expect("fields"),
    );
    for (o, t) in ours_fields.iter().zip(theirs_fields) {
        assert_eq!(o, t, "the Avro field {}", o["name"]);
    }
    assert_eq!(ours, theirs[1], "the whole row record");
    // The envelope around it: before, after, source, transaction, op, ts_*.
    let theirs = support::avro_data::from_connect(&record["schema"]);
    let ours = support::avro_data::expand(&envelope_schema(
        "dbz.public.edge",
        &value_record("dbz.public.edge.Value", &ours_all),
    ));
    for (o, t) in ours["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .zip(theirs["fields"].as_array().expect("fields"))
    {
        assert_eq!(o, t, "the envelope field {}", o["name"]);
    }
    assert_eq!(ours, theirs, "the whole envelope");
    // The key: the primary key's columns.
    let key: Value = serde_json::from_slice(key.as_deref().expect("key")).expect("JSON key");
    let id = ours_all
        .iter()
        .find(|(n, _, _)| n == "id")
        .map(|(_, t, _)| t.clone())
        .expect("id");
    assert_eq!(
        support::avro_data::expand(&key_record("dbz.public.edge", &[("id".to_string(), id, false)])),
        support::avro_data::from_connect(&key["schema"]),
        "the key record"
    );
}

/// A table `v` with a value of every type the format maps (arrays
/// included), in row 1.
const VALUES_TABLE: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok'); \
         CREATE TABLE v (id int PRIMARY KEY, i2 smallint, i8 bigint, r real, f8 double precision, b boolean, \
           n38 numeric(38,10), n52 numeric(5,2), nneg numeric(5,2), nfree numeric, m money, mneg money, txt text, \
           vc varchar(10), ch char(3), by bytea, d date, d0 date, t time, t24 time, t3 time(3), ttz timetz, \
           ts timestamp, ts3 timestamp(3), ts0 timestamp(0), tstz timestamptz, tstz3 timestamptz(3), iv interval, \
           ivneg interval, u uuid, j json, jb jsonb, e mood, b1 bit(1), bt bit(3), bt2 bit(10), vb varbit, \
           ip inet, mac macaddr, pt point, rng int4range, arr int[], tarr text[], arr2 int[], narr numeric(5,2)[], \
           earr int[]); \
         INSERT INTO v VALUES (1, -32768, 9223372036854775807, 'NaN', '-Infinity', true, \
           9999999999999999999999999999.9999999999, 123.45, -0.05, 3.14159, 12.34, -1234.5, 'héllo ☃', 'v', 'ab', \
           '\\x00ff', '2024-01-31', '1969-07-20', '13:45:00.123456', '24:00:00', '13:45:00.123', '13:45:00+02', \
           '2024-01-31 13:45:00.123456', '2024-01-31 13:45:00.123', '1969-07-20 20:17:40', \
           '2024-01-31 13:45:00.5+00', '2024-01-31 13:45:00.25+02', '1 year 2 mons 3 days 04:05:06.789', \
           '-1 days -02:00:00', 'a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a', '{\"a\":1}', '{\"b\": 2}', 'ok', \
           B'1', B'110', B'1000000001', B'11', '10.0.0.1/8', '08:00:2b:01:02:03', '(1.5,-2)', '[1,10)', \
           '{1,NULL,3}', '{a,NULL,\"b c\"}', '{{1,NULL},{3,4}}', '{1.5,-2.25}', '{}');";

/// Values: for a row holding a value of every type the format maps
/// (arrays included), the Avro datum walhouse encodes from Postgres's text is,
/// decoded, the value Debezium 3.6.1 wrote (both in one normal form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debeziums_values_are_reproduced() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("shop");
    let broker = Broker::start();
    let sql = pg.client("shop").await;
    sql.batch_execute(VALUES_TABLE).await.expect("source");
    let (record, _, _dbz) = first_debezium_record(&pg, &broker, "v").await;
    let after_schema = after_schema(&record);
    let payload = &record["payload"]["after"];
    // The replication connection's settings, so the text is what pgoutput sends.
    sql.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = UTC; SET IntervalStyle = iso_8601; \
         SET extra_float_digits = 3; SET bytea_output = hex",
    )
    .await
    .expect("settings");
    let (columns, infos) = columns_of(&sql, "v").await;
    let lookup = |oid: u32| infos.get(&oid);
    let mut compared = 0;
    for (name, oid, typmod, _) in &columns {
        let (oid, typmod) = (*oid, *typmod);
        // The type's own output (the simple protocol's text), as pgoutput sends it.
        let answer = sql
            .simple_query(&format!("SELECT \"{name}\" FROM v"))
            .await
            .expect("text");
        let text = answer
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("a value");
        let t = connect_type(oid, typmod, &lookup);
        let mut bytes = Vec::new();
        encode_value(&t, typmod, &text, &mut bytes).unwrap_or_else(|e| panic!("column {name} ({text}): {e}"));
        let schema = avro_schema(&t, false);
        let parsed = apache_avro::Schema::parse(&schema).expect("schema");
        let datum = apache_avro::reader::datum::GenericDatumReader::builder(&parsed)
            .build()
            .expect("reader")
            .read_value(&mut bytes.as_slice())
            .unwrap_or_else(|e| panic!("column {name}: {e}"));
        let ours = support::avro_data::normal_avro(&support::avro_data::expand(&schema), &datum);
        let field_schema = after_schema["fields"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["field"] == name.as_str()))
            .expect("Debezium's column");
        let theirs = support::avro_data::normal_connect(field_schema, &payload[&name]);
        assert_eq!(ours, theirs, "column {name} ({text})");
        compared += 1;
    }
    println!("{compared} values: walhouse's equals Debezium's for each");
}

/// `v` with every name under `from.` moved under `to.`.
fn renamed(v: Value, from: &str, to: &str) -> Value {
    match v {
        Value::String(s) => match s.strip_prefix(&format!("{from}.")) {
            Some(rest) => Value::String(format!("{to}.{rest}")),
            None => Value::String(s),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(|x| renamed(x, from, to)).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, x)| (k, renamed(x, from, to))).collect()),
        other => other,
    }
}

/// Where two JSON values first differ (a path and both sides), for
/// assertion messages that point at the field.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: walhouse {a} / Debezium {b}")),
    }
}

/// A record of either side in one normal form: key, value and the
/// Debezium key-change header, each as JSON (null when absent).
#[derive(Debug, PartialEq)]
struct Normal {
    key: Value,
    value: Value,
    header: Option<(String, Value)>,
}

/// Debezium's record (JSON with Connect schemas) in normal form, with the
/// Avro schemas AvroData would register for its key and value.
fn debezium_normal(r: &support::kafka::Record) -> (Normal, Option<Value>, Option<Value>) {
    let parse = |b: Option<&[u8]>| b.map(|b| serde_json::from_slice::<Value>(b).expect("JSON"));
    let (key, value) = (parse(r.key.as_deref()), parse(r.value.as_deref()));
    let normal = |v: &Option<Value>| {
        v.as_ref().map_or(Value::Null, |v| {
            support::avro_data::normal_connect(&v["schema"], &v["payload"])
        })
    };
    let schema = |v: &Option<Value>| v.as_ref().map(|v| support::avro_data::from_connect(&v["schema"]));
    let header = r
        .headers
        .iter()
        .find(|(k, _)| k == "__debezium.oldkey" || k == "__debezium.newkey")
        .map(|(k, v)| {
            let v: Value = serde_json::from_slice(v.as_deref().unwrap_or(b"null")).expect("header JSON");
            (k.clone(), v)
        });
    (
        Normal {
            key: normal(&key),
            value: normal(&value),
            header,
        },
        schema(&key),
        schema(&value),
    )
}

/// walhouse's record (Confluent wire format) in normal form, with its
/// registered key and value schemas.
async fn walhouse_normal(registry: &Registry, r: &support::kafka::Record) -> (Normal, Option<Value>, Option<Value>) {
    async fn decode(registry: &Registry, bytes: Option<&[u8]>) -> (Value, Option<Value>) {
        let Some(bytes) = bytes else { return (Value::Null, None) };
        let (id, mut body) = split_wire(bytes).expect("wire format");
        let text = registry.schema(id).await.expect("schema");
        let json: Value = serde_json::from_str(&text).expect("schema JSON");
        let schema = apache_avro::Schema::parse_str(&text).expect("parses");
        let datum = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .expect("reader")
            .read_value(&mut body)
            .expect("decodes");
        assert!(body.is_empty(), "bytes left after the datum");
        let expanded = support::avro_data::expand(&json);
        (support::avro_data::normal_avro(&expanded, &datum), Some(expanded))
    }
    let (key, key_schema) = decode(registry, r.key.as_deref()).await;
    let (value, value_schema) = decode(registry, r.value.as_deref()).await;
    let mut header = None;
    for (k, v) in &r.headers {
        if k == "__debezium.oldkey" || k == "__debezium.newkey" {
            header = Some((k.clone(), decode(registry, v.as_deref()).await.0));
        }
    }
    (Normal { key, value, header }, key_schema, value_schema)
}

/// What the two sides may differ in and still be the same record: the
/// prefix (in names and `source.name`), processing times, the connector's
/// version, and for snapshot reads the values (not the presence or shape)
/// of the snapshot's LSN, transaction and times, and Debezium's per-table
/// first/last marks (see the README's "What still differs").
fn comparable(mut v: Value, prefix: &str) -> Value {
    fn rename(v: &mut Value, prefix: &str) {
        match v {
            Value::String(s) if s == prefix => *s = "PREFIX".into(),
            Value::String(s) if s.starts_with(&format!("{prefix}.")) => {
                *s = format!("PREFIX{}", &s[prefix.len()..]);
            }
            Value::Array(a) => a.iter_mut().for_each(|x| rename(x, prefix)),
            Value::Object(o) => o.values_mut().for_each(|x| rename(x, prefix)),
            _ => {}
        }
    }
    rename(&mut v, prefix);
    let Some(o) = v.as_object_mut() else { return v };
    for f in ["ts_ms", "ts_us", "ts_ns"] {
        if o.get(f).is_some_and(|x| !x.is_null()) {
            o.insert(f.into(), "set".into());
        }
    }
    let read = o.get("op").and_then(Value::as_str) == Some("r");
    if let Some(source) = o.get_mut("source").and_then(Value::as_object_mut) {
        source.insert("version".into(), "VERSION".into());
        if read {
            // Two snapshots differ in where and when they were taken, not
            // in what they carry: each position by its shape.
            let lsn = source.get("lsn").and_then(Value::as_i64);
            for f in ["ts_ms", "ts_us", "ts_ns", "lsn", "txId"] {
                if source.get(f).is_some_and(Value::is_number) {
                    source.insert(f.into(), "SNAPSHOT".into());
                }
            }
            // `[<last commit>, <lsn>]`: the read's own LSN as its second.
            if let Some(Value::String(sequence)) = source.get("sequence") {
                let shape = match serde_json::from_str::<Vec<Value>>(sequence).as_deref() {
                    Ok([first, Value::String(second)]) if second.parse::<i64>().ok() == lsn => {
                        format!("[{},LSN]", if first.is_null() { "null" } else { "LSN" })
                    }
                    _ => format!("unexpected: {sequence}"),
                };
                source.insert("sequence".into(), shape.into());
            }
            if let Some(Value::String(mark)) = source.get_mut("snapshot") {
                if matches!(
                    mark.as_str(),
                    "first" | "first_in_data_collection" | "last_in_data_collection"
                ) {
                    *mark = "true".into();
                }
            }
        }
    }
    v
}

/// The Debezium format, record for record: the same edge values, TOAST
/// columns left unchanged (placeholder, and FULL identity's fill), a
/// NOT NULL column missing from a delete's old row, a key change (delete,
/// tombstone, create, with the old-key and new-key headers), a table keyed
/// by its unique index, a skipped truncate and the transaction block go
/// through Debezium 3.6.1 and through `walhouse-capture --format debezium`;
/// every record's key, value, headers and Avro schemas are Debezium's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walhouse_writes_debeziums_records_record_for_record() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("shop");
    let broker = Broker::start();
    let registry = TestRegistry::start().await;
    let sql = pg.client("shop").await;
    sql.batch_execute(VALUES_TABLE).await.expect("values table");
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, nn text NOT NULL, big text, bb bytea, ta text[], n int); \
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL, ALTER COLUMN bb SET STORAGE EXTERNAL, \
           ALTER COLUMN ta SET STORAGE EXTERNAL; \
         CREATE TABLE f (id int PRIMARY KEY, big text, arr text[], b bytea, j jsonb); \
         ALTER TABLE f REPLICA IDENTITY FULL, ALTER COLUMN big SET STORAGE EXTERNAL; \
         CREATE TABLE u (a int NOT NULL, b text, c int); \
         CREATE UNIQUE INDEX u_z ON u (c); CREATE UNIQUE INDEX u_a ON u (a); ALTER TABLE u REPLICA IDENTITY FULL; \
         INSERT INTO t VALUES (1, 'x', repeat('y', 5000), decode(repeat('ab', 5000), 'hex'), \
           ARRAY[repeat('z', 5000)], 1), (2, 'z', NULL, NULL, NULL, 2); \
         INSERT INTO u VALUES (1, 'one', 10); \
         CREATE TABLE dflt (id serial PRIMARY KEY, cur char(3) NOT NULL DEFAULT 'EUR', \
           bal numeric(19,4) NOT NULL DEFAULT 0, neg numeric(5,2) DEFAULT -1.5, created timestamptz NOT NULL DEFAULT now(), \
           at3 timestamptz(3) DEFAULT '2024-01-31 10:00:00+00', flag boolean NOT NULL DEFAULT true, \
           n int DEFAULT -1, big bigint DEFAULT 9223372036854775807, f float8 DEFAULT 1.5, d date DEFAULT '2024-01-31', \
           ts timestamp DEFAULT '2024-01-31 10:00:00', ts3 timestamp(3) DEFAULT now(), t time DEFAULT '10:00', \
           note text NOT NULL DEFAULT 'it''s', j jsonb DEFAULT '{}', u uuid DEFAULT gen_random_uuid(), \
           e mood NOT NULL DEFAULT 'ok', nfree numeric DEFAULT 1.5, m money DEFAULT 0, nul text DEFAULT NULL); \
         INSERT INTO dflt DEFAULT VALUES;",
    )
    .await
    .expect("tables");
    let dbz = Debezium::start(
        &broker.bootstrap(),
        &pg,
        "shop",
        "dbz",
        &[("provide.transaction.metadata", "true")],
    );
    // Debezium's snapshot first: its schemas, as the AvroConverter would
    // have registered them, become the first version of each subject
    // walhouse writes (names under walhouse's prefix), so walhouse's own
    // registration goes through the registry's BACKWARD check, as in a
    // migration onto Debezium's subjects.
    let debezium_snapshot = [("v", 1), ("t", 2), ("u", 1), ("dflt", 1)];
    let client = Registry::new(&RegistryConfig {
        url: registry.url.clone(),
        ..Default::default()
    })
    .expect("registry");
    for (table, rows) in debezium_snapshot {
        let (bootstrap, topic) = (broker.bootstrap(), format!("dbz.public.{table}"));
        let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, rows as usize, LIMIT))
            .await
            .expect("reader");
        assert_eq!(
            records.len(),
            rows as usize,
            "Debezium's snapshot of {table}; Connect's log:\n{}",
            dbz.log()
        );
        let (_, key_schema, value_schema) = debezium_normal(&records[0]);
        for (suffix, schema) in [("key", key_schema), ("value", value_schema)] {
            let schema = renamed(schema.expect("a schema"), "dbz", "wh");
            client
                .register(&format!("wh.public.{table}-{suffix}"), &schema.to_string())
                .await
                .unwrap_or_else(|e| panic!("registering Debezium's {table}-{suffix}: {e}"));
        }
    }
    let capture = CaptureCommand::from(&pg.url("walhouse_scram", "shop"))
        .into_kafka(&broker.bootstrap(), &registry.url, "wh")
        .with("--format", "debezium")
        .with("--transaction-topic", "true")
        .start();
    for (table, rows) in debezium_snapshot {
        let (bootstrap, topic) = (broker.bootstrap(), format!("wh.public.{table}"));
        let held = tokio::task::spawn_blocking(move || wait_for_count(&bootstrap, &topic, rows, LIMIT))
            .await
            .expect("counter");
        assert_eq!(held, rows, "walhouse's snapshot of {table}");
    }
    for (table, _) in debezium_snapshot {
        for suffix in ["key", "value"] {
            let versions = registry.versions(&format!("wh.public.{table}-{suffix}"));
            assert!(
                (1..=2).contains(&versions),
                "wh.public.{table}-{suffix}: walhouse's schema is Debezium's or a BACKWARD-compatible next version ({versions} versions)"
            );
        }
    }
    for statement in [
        "BEGIN; UPDATE t SET n = 10 WHERE id = 1; \
         INSERT INTO f VALUES (1, repeat('q', 5000), ARRAY['a', NULL], '\\x7879', '{\"a\": 1}'); COMMIT",
        "UPDATE f SET b = '\\x7a7a' WHERE id = 1",
        "UPDATE t SET id = 3 WHERE id = 2",
        "DELETE FROM t WHERE id = 1",
        "INSERT INTO u VALUES (2, 'two', NULL)",
        "UPDATE u SET b = 'uno' WHERE a = 1",
        "TRUNCATE u",
        "INSERT INTO v (id) VALUES (2)",
        "UPDATE v SET i2 = 1, txt = NULL WHERE id = 1",
        "DELETE FROM v WHERE id = 2",
        "INSERT INTO dflt DEFAULT VALUES",
        "INSERT INTO dflt (n, note, at3) VALUES (NULL, 'x', NULL)",
        "DELETE FROM dflt WHERE id = 1",
        "INSERT INTO t VALUES (9, 'end', NULL, NULL, NULL, 9)",
    ] {
        sql.batch_execute(statement).await.expect(statement);
    }
    // Per topic: snapshot reads, then changes (tombstones included).
    let expected = [("t", 9), ("f", 2), ("u", 3), ("v", 5), ("dflt", 5)];
    let reader = Registry::new(&RegistryConfig {
        url: registry.url.clone(),
        ..Default::default()
    })
    .expect("registry");
    let mut compared = 0;
    // Each side has written all it will: walhouse confirmed the WAL's end
    // (it confirms only what Kafka acknowledged), and Debezium's topics
    // hold their count, with a pause for anything it would add. Then every
    // topic is read to its high watermark, so an extra record on either
    // side (a truncate written despite the skipped operations) fails.
    for (table, n) in expected {
        let (bootstrap, topic) = (broker.bootstrap(), format!("dbz.public.{table}"));
        let held = tokio::task::spawn_blocking(move || wait_for_count(&bootstrap, &topic, n as u64, LIMIT))
            .await
            .expect("counter");
        assert_eq!(held, n as u64, "dbz.public.{table}; Connect's log:\n{}", dbz.log());
    }
    assert!(
        pg.wait_confirmed("shop", "walhouse", LIMIT).await,
        "walhouse confirmed the WAL"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (table, n) in expected {
        let mut sides = Vec::new();
        for prefix in ["dbz", "wh"] {
            let (bootstrap, topic) = (broker.bootstrap(), format!("{prefix}.public.{table}"));
            let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
                .await
                .expect("reader");
            assert_eq!(
                records.len(),
                n,
                "{prefix}.public.{table}: every record, none extra; Connect's log:\n{}",
                dbz.log()
            );
            sides.push(records);
        }
        for (i, (d, w)) in sides[0].iter().zip(&sides[1]).enumerate() {
            let (theirs, their_key_schema, their_value_schema) = debezium_normal(d);
            let (ours, our_key_schema, our_value_schema) = walhouse_normal(&reader, w).await;
            let at = format!("{table} record {i}");
            let pairs = [
                ("key", comparable(ours.key, "wh"), comparable(theirs.key, "dbz")),
                ("value", comparable(ours.value, "wh"), comparable(theirs.value, "dbz")),
                (
                    "key schema",
                    our_key_schema.map_or(Value::Null, |s| comparable(s, "wh")),
                    their_key_schema.map_or(Value::Null, |s| comparable(s, "dbz")),
                ),
                (
                    "value schema",
                    our_value_schema.map_or(Value::Null, |s| comparable(s, "wh")),
                    their_value_schema.map_or(Value::Null, |s| comparable(s, "dbz")),
                ),
            ];
            for (what, a, b) in pairs {
                assert!(
                    a == b,
                    "{at}: {what} differs at {}",
                    first_difference(&a, &b, "").unwrap_or_default()
                );
            }
            assert_eq!(ours.header, theirs.header, "{at}: key-change header");
            compared += 1;
        }
    }
    // The transaction topics: BEGIN and END of each transaction with
    // records, the same ids, counts and commit times. Debezium's
    // publication also covers walhouse's own progress tables (written
    // during its snapshot): those transactions are not walhouse's to write.
    let mut sides = Vec::new();
    for prefix in ["dbz", "wh"] {
        let records = read_all(&broker.bootstrap(), &format!("{prefix}.transaction"), LIMIT);
        let mut normal = Vec::new();
        for r in &records {
            let (n, key_schema, value_schema) = if prefix == "dbz" {
                debezium_normal(r)
            } else {
                walhouse_normal(&reader, r).await
            };
            normal.push((n.key, n.value, key_schema, value_schema));
        }
        let own: BTreeSet<String> = normal
            .iter()
            .filter(|(_, v, _, _)| {
                v["data_collections"].as_array().into_iter().flatten().any(|c| {
                    c["data_collection"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("walhouse."))
                })
            })
            .filter_map(|(_, v, _, _)| v["id"].as_str()?.split(':').next().map(str::to_owned))
            .collect();
        normal.retain(|(_, v, _, _)| {
            v["id"]
                .as_str()
                .and_then(|id| id.split(':').next())
                .is_some_and(|xid| !own.contains(xid))
        });
        sides.push(normal);
    }
    assert_eq!(sides[0].len(), sides[1].len(), "transaction records");
    assert!(sides[0].len() >= 24, "{} transaction records", sides[0].len());
    for (i, (d, w)) in sides[0].iter().zip(&sides[1]).enumerate() {
        for (what, a, b) in [("key", &w.0, &d.0), ("value", &w.1, &d.1)] {
            assert!(
                a == b,
                "transaction record {i}: {what} differs at {}",
                first_difference(a, b, "").unwrap_or_default()
            );
        }
        assert_eq!(w.2, d.2, "transaction record {i}: key schema");
        assert_eq!(w.3, d.3, "transaction record {i}: value schema");
        compared += 1;
    }
    capture.stop().await;
    println!("{compared} records: walhouse's equal Debezium's, schemas included");
}
