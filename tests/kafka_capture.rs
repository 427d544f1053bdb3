//! Capture into Kafka against a real Postgres (15 or 18), a real Apache
//! Kafka broker and a Confluent-API registry: every assertion decodes
//! what was read back from the broker with the schema the registry returns.
//!
//! The registry is the test server of `tests/support/registry.rs`, or a
//! real one when `SCHEMA_REGISTRY_URL` is set: the whole suite then runs
//! against it (subjects are unique per run).

use walhouse_test_support as support;

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;
use support::command::CaptureCommand;
use support::kafka::{read_all, read_topic, Broker, Record};
use support::postgres::{PgOptions, PgServer};
use support::registry::TestRegistry;
use tokio::sync::watch;
use walhouse::capture::{self, CaptureError, CaptureSummary};
use walhouse::http::{request, BaseUrl};
use walhouse::registry::{split_wire, Registry, RegistryConfig};

const LIMIT: Duration = Duration::from_secs(60);

struct Env {
    pg: PgServer,
    broker: Broker,
    registry_url: String,
    _test_registry: Option<TestRegistry>,
    /// Unique per test run, so a shared real registry sees fresh subjects.
    prefix: String,
    db: String,
}

impl Env {
    async fn start(db: &str) -> Env {
        Self::start_with(db, PgOptions::default()).await
    }

    async fn start_with(db: &str, options: PgOptions) -> Env {
        support::init_logs();
        let pg = PgServer::start_with(options);
        pg.create_db(db);
        let broker = Broker::start();
        let (test_registry, registry_url) = match std::env::var("SCHEMA_REGISTRY_URL") {
            Ok(url) if !url.is_empty() => (None, url),
            _ => {
                let r = TestRegistry::start().await;
                let url = r.url.clone();
                (Some(r), url)
            }
        };
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or(0);
        Env {
            pg,
            broker,
            registry_url,
            _test_registry: test_registry,
            prefix: format!("wh{nonce}_{db}"),
            db: db.into(),
        }
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    fn args(&self, slot: &str, extra: &[&str]) -> CaptureCommand {
        CaptureCommand::from(&self.pg.url("walhouse_scram", &self.db))
            .into_kafka(&self.broker.bootstrap(), &self.registry_url, &self.prefix)
            .with("--slot", slot)
            .args(extra)
    }

    /// Runs capture in-process until the returned sender says stop.
    fn spawn(&self, slot: &str, extra: &[&str]) -> Running {
        let config = self.args(slot, extra).config();
        let mut dest = capture::kafka_destination(&config).expect("producer");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { capture::run(&config, &mut dest, rx).await });
        Running { stop, task }
    }

    /// Waits until capture streams from `slot`: the slot is active, and
    /// its initial snapshot (if any) is done. The slot is active already
    /// while the snapshot copies, and a test's DDL must not race the copy
    /// (a column dropped before its COPY starts fails the snapshot; see the
    /// README's known limits).
    async fn wait_streaming(&self, slot: &str) {
        assert!(
            self.pg.wait_streaming(&self.db, slot, LIMIT).await,
            "capture did not start streaming from {slot}"
        );
    }

    async fn read(&self, table: &str, expected: usize) -> Vec<Decoded> {
        self.read_within(table, expected, LIMIT).await
    }

    /// Reads until `max` records or `limit`.
    async fn read_within(&self, table: &str, max: usize, limit: Duration) -> Vec<Decoded> {
        self.read_topic(&self.topic(table), max, limit).await
    }

    /// Reads everything the table's topic holds now (to each partition's
    /// high watermark): for topics holding replays, and to show that
    /// nothing more than expected was written.
    async fn read_all(&self, table: &str) -> Vec<Decoded> {
        let (bootstrap, topic) = (self.broker.bootstrap(), self.topic(table));
        let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
            .await
            .expect("reader");
        self.decode_all(records).await
    }

    async fn read_topic(&self, topic: &str, max: usize, limit: Duration) -> Vec<Decoded> {
        let (bootstrap, topic) = (self.broker.bootstrap(), topic.to_owned());
        let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, max, limit))
            .await
            .expect("reader");
        self.decode_all(records).await
    }

    async fn decode_all(&self, records: Vec<Record>) -> Vec<Decoded> {
        let registry = Registry::new(&RegistryConfig {
            url: self.registry_url.clone(),
            ..Default::default()
        })
        .expect("registry");
        let mut out = Vec::new();
        for r in records {
            out.push(Decoded {
                key: match &r.key {
                    Some(k) => Some(decode(&registry, k).await),
                    None => None,
                },
                value: match &r.value {
                    Some(v) => Some(decode(&registry, v).await),
                    None => None,
                },
                raw: r,
            });
        }
        out
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<CaptureSummary, CaptureError>>,
}

impl Running {
    async fn stop(self) -> CaptureSummary {
        let _ = self.stop.send(true);
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("capture stops")
            .expect("task")
            .expect("clean stop")
    }
}

#[derive(Debug)]
struct Decoded {
    key: Option<Value>,
    value: Option<Value>,
    raw: Record,
}

/// Decodes a Confluent-framed message with the schema the registry returns for its id.
async fn decode(registry: &Registry, bytes: &[u8]) -> Value {
    let (id, mut body) = split_wire(bytes).expect("Confluent wire format");
    let text = registry.schema(id).await.expect("schema by id");
    let schema = apache_avro::Schema::parse_str(&text).expect("registered schema parses");
    let v = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader")
        .read_value(&mut body)
        .expect("body decodes with its registered schema");
    assert!(body.is_empty(), "trailing bytes after the Avro body");
    v
}

fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
    let Value::Record(fields) = v else {
        panic!("record expected, got {v:?}")
    };
    &fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name} in {v:?}"))
        .1
}

/// A nullable field's value (`None` for null).
fn opt<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match field(v, name) {
        Value::Union(0, _) | Value::Null => None,
        Value::Union(_, inner) => Some(inner),
        other => Some(other),
    }
}

fn after(d: &Decoded) -> &Value {
    opt(d.value.as_ref().expect("value"), "after").expect("after")
}

fn op(d: &Decoded) -> String {
    match field(d.value.as_ref().expect("value"), "op") {
        Value::String(s) => s.clone(),
        other => panic!("op {other:?}"),
    }
}

fn decimal(v: Option<&Value>) -> i128 {
    let Some(Value::Decimal(d)) = v else {
        panic!("decimal expected, got {v:?}")
    };
    let bytes: Vec<u8> = d.clone().try_into().expect("bytes");
    let mut x: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        x = (x << 8) | i128::from(b);
    }
    x
}

fn string(v: Option<&Value>) -> &str {
    match v {
        Some(Value::String(s)) => s,
        Some(Value::Uuid(_)) => panic!("use uuid"),
        other => panic!("string expected, got {other:?}"),
    }
}

fn text_values(d: &Decoded) -> HashMap<String, Value> {
    match field(d.value.as_ref().expect("value"), "text_values") {
        Value::Map(m) => m.clone(),
        other => panic!("map expected, got {other:?}"),
    }
}

#[tokio::test]
async fn every_change_arrives_keyed_in_the_envelope_with_tombstones_and_truncate() {
    let env = Env::start("shop").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE items (id int PRIMARY KEY, amount numeric(19,4), price double precision, name text,
           created timestamptz, day date, tags text[], payload jsonb, mood mood, ip inet, uid uuid, raw bytea);",
    )
    .await
    .expect("schema");
    let cap = env.spawn("kc_slot", &[]);
    env.wait_streaming("kc_slot").await;
    sql.batch_execute(
        "INSERT INTO items VALUES (1, 1234.5678, 0.1, 'Äpfel ✓', '2024-01-31 13:45:00.123456+01', '1969-07-20',
           '{a,NULL,\"b c\"}', '{\"k\": [1, 2]}', 'happy', '10.0.0.1/8', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff');
         INSERT INTO items (id, amount) VALUES (2, -0.0001);",
    )
    .await
    .expect("insert");
    sql.batch_execute("UPDATE items SET amount = 99.99, name = NULL WHERE id = 1")
        .await
        .expect("update");
    sql.batch_execute("DELETE FROM items WHERE id = 2")
        .await
        .expect("delete");
    sql.batch_execute("TRUNCATE items").await.expect("truncate");
    // c, c, u, d, tombstone, t
    let got = env.read("items", 6).await;
    let summary = cap.stop().await;
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(
        got.iter()
            .map(|d| d.value.as_ref().map_or("tombstone".to_string(), |_| op(d)))
            .collect::<Vec<_>>(),
        ["c", "c", "u", "d", "tombstone", "t"]
    );
    // Keys: a record of the primary key.
    let keys: Vec<Option<&Value>> = got.iter().map(|d| d.key.as_ref()).collect();
    assert_eq!(field(keys[0].expect("key"), "id"), &Value::Int(1));
    assert_eq!(field(keys[1].expect("key"), "id"), &Value::Int(2));
    assert_eq!(field(keys[3].expect("key"), "id"), &Value::Int(2));
    assert_eq!(field(keys[4].expect("tombstone key"), "id"), &Value::Int(2));
    assert!(keys[5].is_none(), "truncate has no key");

    let row = after(&got[0]);
    assert_eq!(opt(row, "id"), Some(&Value::Int(1)));
    assert_eq!(decimal(opt(row, "amount")), 12_345_678);
    assert_eq!(opt(row, "price"), Some(&Value::Double(0.1)));
    assert_eq!(string(opt(row, "name")), "Äpfel ✓");
    // 13:45:00.123456+01 is 12:45:00.123456 UTC.
    assert_eq!(
        opt(row, "created"),
        Some(&Value::TimestampMicros(1_706_705_100_123_456))
    );
    assert_eq!(opt(row, "day"), Some(&Value::Date(-165)));
    let Some(Value::Array(tags)) = opt(row, "tags") else {
        panic!("tags")
    };
    assert_eq!(
        tags,
        &vec![
            Value::Union(1, Box::new(Value::String("a".into()))),
            Value::Union(0, Box::new(Value::Null)),
            Value::Union(1, Box::new(Value::String("b c".into()))),
        ]
    );
    let payload: serde_json::Value = serde_json::from_str(string(opt(row, "payload"))).expect("json");
    assert_eq!(payload, serde_json::json!({"k": [1, 2]}));
    assert_eq!(string(opt(row, "mood")), "happy");
    assert_eq!(string(opt(row, "ip")), "10.0.0.1/8");
    assert!(matches!(opt(row, "uid"), Some(Value::Uuid(u)) if u.to_string() == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(opt(row, "raw"), Some(&Value::Bytes(vec![0, 255])));
    assert_eq!(decimal(opt(after(&got[1]), "amount")), -1);

    let upd = &got[2];
    assert_eq!(decimal(opt(after(upd), "amount")), 999_900);
    assert_eq!(opt(after(upd), "name"), None);
    assert!(
        opt(upd.value.as_ref().expect("value"), "before").is_none(),
        "DEFAULT identity: no before on update"
    );
    let del = got[3].value.as_ref().expect("value");
    assert!(opt(del, "after").is_none());
    assert_eq!(opt(opt(del, "before").expect("before"), "id"), Some(&Value::Int(2)));
    // source block
    let src = field(got[0].value.as_ref().expect("value"), "source");
    assert_eq!(field(src, "connector"), &Value::String("walhouse".into()));
    assert_eq!(field(src, "db"), &Value::String("shop".into()));
    assert_eq!(field(src, "table"), &Value::String("items".into()));
    // Two ordinals a change (a key change's create takes the odd one).
    assert_eq!(field(src, "tx_ordinal"), &Value::Long(2));
    assert_eq!(
        field(field(got[1].value.as_ref().expect("value"), "source"), "tx_ordinal"),
        &Value::Long(4)
    );
    assert!(matches!(opt(src, "txId"), Some(Value::Long(x)) if *x > 0));
    assert!(matches!(opt(src, "commit_lsn"), Some(Value::Long(x)) if *x > 0));
    // The slot confirmed what Kafka acknowledged.
    let confirmed: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'kc_slot'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    assert_eq!(confirmed, summary.acknowledged.to_string());
    // The publication is FOR ALL TABLES, so walhouse's progress tables reach
    // the stream too; they must not leak into the user's Kafka.
    let own: Vec<String> = support::kafka::topics(&env.broker.bootstrap())
        .into_iter()
        .filter(|t| t.starts_with(&format!("{}.walhouse.", env.prefix)))
        .collect();
    assert!(own.is_empty(), "topics for walhouse's own tables: {own:?}");
}

#[tokio::test]
async fn edge_values_round_trip_value_for_value() {
    let env = Env::start("edges").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TABLE edge (id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, n38 numeric(38,10), nfree numeric,
           f4 real, f8 double precision, ts timestamp, tstz timestamptz, d date, t time, txt text,
           arr2 int[][], iv interval, pt point, rng int4range);",
    )
    .await
    .expect("schema");
    let cap = env.spawn("edge_slot", &[]);
    env.wait_streaming("edge_slot").await;
    sql.batch_execute(
        "INSERT INTO edge VALUES
          (1, -32768, 2147483647, -9223372036854775808, 9999999999999999999999999999.9999999999,
           3.14159265358979323846264338327950288419716939937510, 'NaN', '-Infinity',
           '1900-01-01 00:00:00', '0044-03-15 12:00:00+00 BC', '9999-12-31', '24:00:00', '𝄞 \"q\" \\ ☃',
           '{{1,NULL},{3,4}}', '1 year 2 mons 3 days 04:05:06.789', '(1.5,-2)', '[1,10)'),
          (2, NULL, NULL, NULL, 'NaN', 'NaN', 'Infinity', 'NaN', 'infinity', '-infinity', 'infinity', NULL, '',
           '{}', '-1 days', NULL, 'empty'),
          (3, 0, 0, 0, -0.0000000001, -1e-30, 1.5e-7, 5e-324, '2262-04-11 23:47:16.854775', '1969-12-31 23:59:59.999999+00',
           '1970-01-01', '00:00:00.000001', NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .expect("insert");
    let got = env.read("edge", 3).await;
    cap.stop().await;
    assert_eq!(got.len(), 3);
    let (r1, r2, r3) = (after(&got[0]), after(&got[1]), after(&got[2]));
    assert_eq!(opt(r1, "i2"), Some(&Value::Int(-32768)));
    assert_eq!(opt(r1, "i4"), Some(&Value::Int(i32::MAX)));
    assert_eq!(opt(r1, "i8"), Some(&Value::Long(i64::MIN)));
    assert_eq!(
        decimal(opt(r1, "n38")),
        10i128.pow(38) - 1,
        "38 significant digits exactly"
    );
    assert_eq!(
        string(opt(r1, "nfree")),
        "3.14159265358979323846264338327950288419716939937510",
        "unconstrained numeric as exact text"
    );
    assert!(matches!(opt(r1, "f4"), Some(Value::Float(x)) if x.is_nan()));
    assert_eq!(opt(r1, "f8"), Some(&Value::Double(f64::NEG_INFINITY)));
    assert_eq!(
        opt(r1, "ts"),
        Some(&Value::LocalTimestampMicros(-2_208_988_800_000_000))
    );
    assert_eq!(opt(r1, "d"), Some(&Value::Date(2_932_896)));
    // Outside what mainstream Avro libraries read (years 1-9999, times
    // before 24:00): null in the typed field, the exact text beside it.
    assert_eq!(opt(r1, "tstz"), None);
    assert_eq!(opt(r1, "t"), None);
    let tv1 = text_values(&got[0]);
    assert_eq!(
        tv1.get("tstz"),
        Some(&Value::String("0044-03-15 12:00:00+00 BC".into()))
    );
    assert_eq!(tv1.get("t"), Some(&Value::String("24:00:00".into())));
    assert_eq!(string(opt(r1, "txt")), "𝄞 \"q\" \\ ☃");
    let Some(Value::Array(rows)) = opt(r1, "arr2") else {
        panic!("2-d array")
    };
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        Value::Union(
            1,
            Box::new(Value::Array(vec![
                Value::Union(1, Box::new(Value::Int(1))),
                Value::Union(0, Box::new(Value::Null))
            ]))
        )
    );
    assert_eq!(string(opt(r1, "iv")), "P1Y2M3DT4H5M6.789S", "interval as ISO-8601");
    assert_eq!(string(opt(r1, "pt")), "(1.5,-2)");
    assert_eq!(string(opt(r1, "rng")), "[1,10)");
    assert_eq!(tv1.len(), 2, "{tv1:?}");

    // Row 2: what Avro cannot hold is null in the typed field and exact in text_values.
    let tv = text_values(&got[1]);
    for (col, text) in [
        ("n38", "NaN"),
        ("ts", "infinity"),
        ("tstz", "-infinity"),
        ("d", "infinity"),
    ] {
        assert_eq!(opt(r2, col), None, "{col}");
        assert_eq!(tv.get(col), Some(&Value::String(text.into())), "{col}");
    }
    assert_eq!(tv.len(), 4, "{tv:?}");
    assert_eq!(string(opt(r2, "nfree")), "NaN");
    assert_eq!(opt(r2, "f4"), Some(&Value::Float(f32::INFINITY)));
    assert!(matches!(opt(r2, "f8"), Some(Value::Double(x)) if x.is_nan()));
    assert_eq!(opt(r2, "i2"), None);
    assert_eq!(string(opt(r2, "txt")), "", "empty string is not null");
    assert_eq!(opt(r2, "arr2"), Some(&Value::Array(vec![])));
    assert_eq!(string(opt(r2, "rng")), "empty");

    assert_eq!(decimal(opt(r3, "n38")), -1);
    assert_eq!(string(opt(r3, "nfree")), "-0.000000000000000000000000000001");
    assert_eq!(opt(r3, "f4"), Some(&Value::Float(1.5e-7)));
    assert_eq!(opt(r3, "f8"), Some(&Value::Double(5e-324)));
    assert_eq!(opt(r3, "ts"), Some(&Value::LocalTimestampMicros(9_223_372_036_854_775)));
    assert_eq!(opt(r3, "tstz"), Some(&Value::TimestampMicros(-1)));
    assert_eq!(opt(r3, "d"), Some(&Value::Date(0)));
    assert_eq!(opt(r3, "t"), Some(&Value::TimeMicros(1)));

    // Every record reads with fastavro, the library under Confluent's
    // Python client (a BC timestamp or 24:00:00 under its logical type
    // made the whole record unreadable there).
    let registry = Registry::new(&RegistryConfig {
        url: env.registry_url.clone(),
        ..Default::default()
    })
    .expect("registry");
    let mut framed = Vec::new();
    for d in &got {
        let bytes = d.raw.value.clone().expect("value");
        let (id, body) = split_wire(&bytes).expect("wire format");
        let schema = registry.schema(id).await.expect("writer schema");
        framed.push((schema.to_string(), body.to_vec()));
    }
    let decoded = support::python::fastavro_decode(&framed).unwrap_or_else(|e| panic!("fastavro: {e}"));
    assert_eq!(decoded.len(), 3);
    assert_eq!(decoded[0]["after"]["id"], serde_json::json!(1));
    assert_eq!(decoded[0]["after"]["t"], serde_json::Value::Null);
    assert_eq!(decoded[2]["after"]["d"], serde_json::json!("1970-01-01"));
}

/// The Debezium format writes what Debezium's converters cannot carry as
/// null (as Debezium does); each such value is counted by table and column.
#[tokio::test]
async fn values_the_debezium_format_cannot_carry_are_counted_per_column() {
    let env = Env::start("replaced").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE replaced_values (id int PRIMARY KEY, n numeric(10,2), d date, ok text)")
        .await
        .expect("schema");
    let metrics_addr = format!("127.0.0.1:{}", support::postgres::free_port());
    let cap = env.spawn(
        "replaced_slot",
        &["--format", "debezium", "--metrics-addr", &metrics_addr],
    );
    env.wait_streaming("replaced_slot").await;
    sql.batch_execute(
        "INSERT INTO replaced_values VALUES (1, 'NaN', 'infinity', 'a'), (2, 'NaN', '2020-01-01', 'b'), \
         (3, 1.5, '2020-01-02', 'c')",
    )
    .await
    .expect("insert");
    let got = env.read("replaced_values", 3).await;
    assert_eq!(got.len(), 3);
    let nulls: Vec<(bool, bool)> = got
        .iter()
        .map(|d| (opt(after(d), "n").is_none(), opt(after(d), "d").is_none()))
        .collect();
    assert_eq!(
        nulls,
        [(true, true), (true, false), (false, false)],
        "written as null, as Debezium does"
    );
    let url = BaseUrl::parse(&format!("http://{metrics_addr}")).expect("url");
    let metrics = request(&url, None, "GET", "/metrics", &[], None, Duration::from_secs(5))
        .await
        .expect("metrics endpoint answers");
    cap.stop().await;
    let text = String::from_utf8(metrics.body).expect("utf8");
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("walhouse_capture_replaced_values_total{table=\"public.replaced_values\""))
        .collect();
    assert_eq!(
        counted,
        [
            "walhouse_capture_replaced_values_total{table=\"public.replaced_values\",column=\"d\"} 1",
            "walhouse_capture_replaced_values_total{table=\"public.replaced_values\",column=\"n\"} 2",
        ],
        "{text}"
    );
}

async fn latest_version(env: &Env, subject: &str) -> i32 {
    Registry::new(&RegistryConfig {
        url: env.registry_url.clone(),
        ..Default::default()
    })
    .expect("registry")
    .latest(subject)
    .await
    .expect("subject exists")
    .version
}

#[tokio::test]
async fn columns_added_and_dropped_mid_stream_make_new_schema_versions() {
    let env = Env::start("evolve").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text, b text)")
        .await
        .expect("schema");
    let metrics_port = support::postgres::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let cap = env.spawn("evolve_slot", &["--metrics-addr", &metrics_addr]);
    env.wait_streaming("evolve_slot").await;
    sql.batch_execute("INSERT INTO t VALUES (1, 'a1', 'b1')")
        .await
        .expect("v1");
    sql.batch_execute("ALTER TABLE t ADD COLUMN c numeric(10,2) DEFAULT 1.5")
        .await
        .expect("add");
    sql.batch_execute("INSERT INTO t VALUES (2, 'a2', 'b2', 7.25)")
        .await
        .expect("v2");
    sql.batch_execute("ALTER TABLE t DROP COLUMN b").await.expect("drop");
    sql.batch_execute("INSERT INTO t VALUES (3, 'a3', 9.5)")
        .await
        .expect("v3");
    let got = env.read("t", 3).await;
    if cap.task.is_finished() {
        // Say why capture ended instead of failing on its closed endpoint.
        panic!("capture ended early: {:?}", cap.task.await);
    }
    let metrics_url = BaseUrl::parse(&format!("http://{metrics_addr}")).expect("url");
    let get = |path: &'static str| {
        let url = metrics_url.clone();
        async move {
            request(&url, None, "GET", path, &[], None, Duration::from_secs(5))
                .await
                .expect("metrics endpoint answers")
        }
    };
    let health = get("/health").await;
    assert_eq!(
        (health.status, String::from_utf8_lossy(&health.body).trim()),
        (200, "streaming")
    );
    let text = String::from_utf8(get("/metrics").await.body).expect("utf8");
    assert!(
        text.contains("walhouse_capture_events_total{table=\"public.t\",op=\"insert\"} 3"),
        "{text}"
    );
    assert!(text.contains("walhouse_capture_transactions_total"), "{text}");
    cap.stop().await;
    assert_eq!(got.len(), 3);
    // Three writer schemas, each decodable: each message names its own id.
    let ids: Vec<u32> = got
        .iter()
        .map(|d| split_wire(d.raw.value.as_deref().expect("value")).expect("wire").0)
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    assert_eq!(latest_version(&env, &format!("{}-value", env.topic("t"))).await, 3);
    let (r1, r2, r3) = (after(&got[0]), after(&got[1]), after(&got[2]));
    assert_eq!(string(opt(r1, "b")), "b1");
    assert!(matches!(r1, Value::Record(f) if f.len() == 3));
    assert_eq!(decimal(opt(r2, "c")), 725);
    assert_eq!(string(opt(r2, "b")), "b2");
    assert_eq!(decimal(opt(r3, "c")), 950);
    assert!(
        matches!(r3, Value::Record(f) if f.iter().all(|(n, _)| n != "b")),
        "b dropped"
    );
}

#[tokio::test]
async fn an_incompatible_schema_stops_capture_and_loses_nothing() {
    // A commit waiting for a synchronous standby is in the WAL, so the
    // walsender decodes it, but other sessions do not see it yet: the
    // window in which capture reads the catalog for the new shape. A
    // standby that never comes holds the window open until the test ends
    // the wait; every other session commits asynchronously (the server's
    // default here) and never waits.
    let env = Env::start_with(
        "compat",
        PgOptions {
            extra_conf: vec!["synchronous_standby_names = 'walhouse_never_connects'".into()],
            ..PgOptions::default()
        },
    )
    .await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
        .await
        .expect("schema");
    let cap = env.spawn("compat_slot", &[]);
    env.wait_streaming("compat_slot").await;
    sql.batch_execute("INSERT INTO t VALUES (1, 10)").await.expect("insert");
    assert_eq!(env.read("t", 1).await.len(), 1);
    // int -> text is not BACKWARD compatible.
    let retyper = env.pg.client(&env.db).await;
    let retyper_pid: i32 = retyper
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let retype = tokio::spawn(async move {
        retyper
            .batch_execute(
                "SET synchronous_commit = on; \
                 BEGIN; ALTER TABLE t ALTER COLUMN n TYPE text; INSERT INTO t VALUES (2, 'twenty'); COMMIT",
            )
            .await
    });
    let deadline = std::time::Instant::now() + LIMIT;
    while sql
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
            &[&retyper_pid],
        )
        .await
        .expect("pg_stat_activity")
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the retype never waited for its standby"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Capture has the Relation message well within this; it must not
    // describe the new shape from the catalog that predates it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sql.query_one("SELECT pg_cancel_backend($1)", &[&retyper_pid])
        .await
        .expect("end the wait: the commit becomes visible");
    // Ending the wait leaves the commit in place (with a warning).
    let _ = retype.await.expect("retype task");
    let err = tokio::time::timeout(LIMIT, cap.task)
        .await
        .expect("capture stops by itself")
        .expect("task")
        .expect_err("capture fails");
    let text = err.to_string();
    assert!(
        text.contains("table public.t") && text.contains("n (integer -> text)"),
        "{text}"
    );
    assert!(text.contains("incompatible"), "{text}");
    // The refused change was not acknowledged: after relaxing the subject's
    // compatibility, a restart delivers it.
    let subject = format!("{}-value", env.topic("t"));
    let url = BaseUrl::parse(&env.registry_url).expect("url");
    let resp = request(
        &url,
        None,
        "PUT",
        &format!("/config/{subject}"),
        &[("Content-Type", "application/vnd.schemaregistry.v1+json".into())],
        Some(br#"{"compatibility": "NONE"}"#),
        Duration::from_secs(10),
    )
    .await
    .expect("PUT /config");
    assert_eq!(resp.status, 200);
    let cap = env.spawn("compat_slot", &[]);
    let got = env.read_within("t", 2, Duration::from_secs(20)).await;
    cap.stop().await;
    let values: Vec<String> = got
        .iter()
        .map(|d| match opt(after(d), "n") {
            Some(Value::Int(i)) => i.to_string(),
            Some(Value::String(s)) => s.clone(),
            other => panic!("n {other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        ["10", "twenty"],
        "the refused change arrives once, nothing before it repeats"
    );
}

#[tokio::test]
async fn killed_mid_stream_and_restarted_every_change_arrives_in_key_order() {
    let env = Env::start("crash").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .expect("schema");
    let spawn_binary = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
        cmd.args(env.args("crash_slot", &["--topic-partitions", "3"]).argv())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().expect("walhouse-capture starts")
    };
    let mut child = spawn_binary();
    env.wait_streaming("crash_slot").await;
    // 20 keys, each counted up in its own transactions: 400 updates in all.
    sql.batch_execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g")
        .await
        .expect("seed");
    let writer = {
        let sql = env.pg.client(&env.db).await;
        tokio::spawn(async move {
            for round in 1..=20 {
                for id in 1..=20 {
                    sql.execute("UPDATE counters SET n = $1 WHERE id = $2", &[&round, &id])
                        .await
                        .expect("update");
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    writer.await.expect("writer");
    let mut child = spawn_binary();
    let expected = 20 + 400;
    // Replays make the count unknowable: once the restarted capture has
    // confirmed everything, read all the topic holds.
    assert!(
        env.pg.wait_confirmed(&env.db, "crash_slot", LIMIT).await,
        "the restarted capture did not confirm every change"
    );
    let got = env.read_all("counters").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.len() >= expected, "at least once: {} of {expected}", got.len());
    let mut per_key: HashMap<i32, Vec<i32>> = HashMap::new();
    for d in &got {
        let Value::Int(id) = field(d.key.as_ref().expect("key"), "id") else {
            panic!("int key")
        };
        let Some(Value::Int(n)) = opt(after(d), "n") else {
            panic!("n")
        };
        per_key.entry(*id).or_default().push(*n);
    }
    assert_eq!(per_key.len(), 20);
    for (id, seq) in &per_key {
        // Every value 0..=20 arrived, the last one last…
        for v in 0..=20 {
            assert!(seq.contains(&v), "key {id} lacks {v}: {seq:?}");
        }
        assert_eq!(seq.last(), Some(&20), "key {id}: {seq:?}");
        // …and order only ever restarts once (the replay after the kill).
        let restarts = seq.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(restarts <= 1, "key {id} out of order: {seq:?}");
        // Each key lives in one partition.
        let parts: std::collections::HashSet<i32> = got
            .iter()
            .filter(|d| field(d.key.as_ref().expect("key"), "id") == &Value::Int(*id))
            .map(|d| d.raw.partition)
            .collect();
        assert_eq!(parts.len(), 1, "key {id} spread over {parts:?}");
    }
}

#[tokio::test]
async fn a_broker_outage_is_waited_out_without_loss() {
    let mut env = Env::start("outage").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("schema");
    // The idempotent producer (the default) rides out the outage: the
    // broker keeps its log dir, so producer ids and records survive.
    let cap = env.spawn("outage_slot", &[]);
    env.wait_streaming("outage_slot").await;
    sql.batch_execute("INSERT INTO t VALUES (1)").await.expect("before");
    assert_eq!(env.read("t", 1).await.len(), 1);
    env.broker.stop();
    for i in 2..=5 {
        sql.batch_execute(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .expect("during");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!cap.task.is_finished(), "capture waits for the broker");
    env.broker.resume();
    sql.batch_execute("INSERT INTO t VALUES (6)").await.expect("after");
    // The slot moves past change 6 only once Kafka acknowledged it and
    // everything before it: a miss here is capture's, a miss below the broker's.
    assert!(
        env.pg.wait_confirmed(&env.db, "outage_slot", LIMIT).await,
        "capture did not get changes 2..6 acknowledged within {LIMIT:?} of the broker's return"
    );
    let got = env.read("t", 6).await;
    let summary = cap.stop().await;
    let ids: Vec<i32> = got
        .iter()
        .map(|d| match opt(after(d), "id") {
            Some(Value::Int(i)) => *i,
            other => panic!("id {other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        (1..=6).collect::<Vec<_>>(),
        "every change once and in order, across the outage"
    );
    assert!(!summary.acknowledged.is_zero());
}

#[test]
fn the_test_registry_checks_backward_compatibility() {
    use serde_json::json;
    use support::registry::can_read;
    let rec = |fields: serde_json::Value| json!({"type": "record", "name": "R", "fields": fields});
    let old = rec(json!([{"name": "a", "type": ["null", "int"], "default": null}]));
    let added = rec(json!([
        {"name": "a", "type": ["null", "int"], "default": null},
        {"name": "b", "type": ["null", "string"], "default": null}
    ]));
    let dropped = rec(json!([]));
    let retyped = rec(json!([{"name": "a", "type": ["null", "string"], "default": null}]));
    let promoted = rec(json!([{"name": "a", "type": ["null", "long"], "default": null}]));
    let required = rec(json!([{"name": "a", "type": ["null", "int"], "default": null}, {"name": "c", "type": "int"}]));
    assert!(can_read(&added, &old).is_ok());
    assert!(can_read(&dropped, &old).is_ok());
    assert!(can_read(&promoted, &old).is_ok());
    assert!(can_read(&retyped, &old).is_err());
    assert!(can_read(&required, &old).is_err());
}

#[tokio::test]
async fn the_transaction_topic_brackets_each_transaction_with_counts() {
    let env = Env::start("txtopic").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let cap = env.spawn("tx_slot", &["--transaction-topic", "true"]);
    env.wait_streaming("tx_slot").await;
    sql.batch_execute("BEGIN; INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1); COMMIT")
        .await
        .expect("tx1");
    sql.batch_execute("INSERT INTO b VALUES (2)").await.expect("tx2");
    let got = env.read_topic(&format!("{}.transaction", env.prefix), 4, LIMIT).await;
    cap.stop().await;
    assert_eq!(got.len(), 4, "{got:#?}");
    let status = |d: &Decoded| match field(d.value.as_ref().expect("value"), "status") {
        Value::String(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        got.iter().map(status).collect::<Vec<_>>(),
        ["BEGIN", "END", "BEGIN", "END"]
    );
    let end = got[1].value.as_ref().expect("value");
    assert_eq!(opt(end, "event_count"), Some(&Value::Long(3)));
    let Some(Value::Array(collections)) = opt(end, "data_collections") else {
        panic!("collections")
    };
    let counts: Vec<(String, i64)> = collections
        .iter()
        .map(|c| match (field(c, "data_collection"), field(c, "event_count")) {
            (Value::String(t), Value::Long(n)) => (t.clone(), *n),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(counts, [("public.a".to_string(), 2), ("public.b".to_string(), 1)]);
    assert_eq!(got[0].key, got[1].key, "BEGIN and END share the transaction id");
    assert_ne!(got[1].key, got[2].key);
}

/// A transaction re-sent after a reconnect numbers its records from 1
/// again in the Debezium format's `transaction` block (`total_order`,
/// `data_collection_order`), as Debezium does for each delivery of a
/// transaction: capture is held inside a large transaction
/// (`capture.mid_transaction`), its replication connection is killed, and
/// the transaction comes again from its Begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_again_after_a_reconnect_is_numbered_from_one() {
    const ROWS: i64 = 100_000;
    let env = Env::start("txagain").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("dir");
    let hold = dir.path().join("hold");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WALHOUSE_")) {
        cmd.env_remove(k);
    }
    let mut capture = cmd
        .args(
            env.args("again_slot", &["--format", "debezium", "--transaction-topic", "true"])
                .argv(),
        )
        .env(
            "WALHOUSE_FAILPOINTS",
            format!("capture.mid_transaction=pause-while:{}", hold.display()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("walhouse-capture starts");
    env.wait_streaming("again_slot").await;
    std::fs::write(&hold, b"").expect("hold");
    // Large enough that the socket buffers cannot hold the rest of it.
    sql.batch_execute(&format!(
        "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .expect("the transaction");
    let reached = walhouse::failpoint::reached(&hold);
    let deadline = std::time::Instant::now() + LIMIT;
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "capture never reached the transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = 'again_slot'",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "the walsender was running");
    std::fs::remove_file(&hold).expect("release");
    assert!(
        env.pg.wait_confirmed(&env.db, "again_slot", LIMIT).await,
        "the transaction was confirmed"
    );
    let _ = capture.kill().await;
    let (bootstrap, topic) = (env.broker.bootstrap(), env.topic("t"));
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
        .await
        .expect("reader");
    let total = records.len();
    assert!(
        total > ROWS as usize,
        "the transaction was sent again after the reconnect: {total} records"
    );
    let registry = Registry::new(&RegistryConfig {
        url: env.registry_url.clone(),
        ..Default::default()
    })
    .expect("registry");
    // The last ROWS records are the transaction sent again, in order.
    let again = &records[total - ROWS as usize..];
    let mut seen = Vec::new();
    for (i, r) in [(0, &again[0]), (1, &again[1]), (ROWS - 1, &again[ROWS as usize - 1])] {
        let value = decode(&registry, r.value.as_deref().expect("value")).await;
        let id = match opt(&value, "after").map(|a| field(a, "id")) {
            Some(Value::Int(id)) => i64::from(*id),
            other => panic!("{other:?}"),
        };
        let tx = opt(&value, "transaction").expect("a transaction block");
        let order = |name: &str| match field(tx, name) {
            Value::Long(n) => *n,
            other => panic!("{name}: {other:?}"),
        };
        seen.push((i, id, order("total_order"), order("data_collection_order")));
    }
    assert_eq!(
        seen,
        vec![(0, 1, 1, 1), (1, 2, 2, 2), (ROWS - 1, ROWS, ROWS, ROWS)],
        "(position in the re-sent transaction, id, total_order, data_collection_order)"
    );
}

/// A topic capture cannot have stops it at start, with the cause and the
/// fix, before any slot is made: one the broker refuses to create (a
/// replication factor above its one broker), and one left to a broker
/// whose auto-creation is off (`--topic-partitions 0`). Before, capture
/// went on and its records waited for the topic until they timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_cannot_be_had_stops_capture_at_start() {
    let env = Env::start("notopic").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .expect("schema");
    for (slot, extra, fix) in [
        (
            "rf_slot",
            &["--topic-replication-factor", "3"][..],
            "--topic-replication-factor",
        ),
        ("auto_slot", &["--topic-partitions", "0"][..], "--topic-partitions N"),
    ] {
        let cap = env.spawn(slot, extra);
        let ended = tokio::time::timeout(Duration::from_secs(30), cap.task)
            .await
            .unwrap_or_else(|_| panic!("{slot}: capture did not stop at start"))
            .expect("task");
        let e = ended.expect_err("a topic it cannot have").to_string();
        assert!(e.contains(&env.topic("t")) && e.contains(fix), "{slot}: {e}");
        let slots: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slots")
            .get(0);
        assert_eq!(slots, 0, "{slot}: nothing was read");
    }
}

async fn confirmed(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'hb_slot'",
        &[],
    )
    .await
    .expect("slot")
    .get(0)
}

#[tokio::test]
async fn heartbeats_advance_an_idle_slot_and_produce_nothing() {
    let env = Env::start("heartbeat").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let cap = env.spawn("hb_slot", &["--heartbeat-interval-ms", "200"]);
    env.wait_streaming("hb_slot").await;
    let first = confirmed(&sql).await;
    let mut advanced = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = confirmed(&sql).await;
        if now > first {
            advanced += 1;
            if advanced >= 2 {
                break;
            }
        }
    }
    let summary = cap.stop().await;
    assert!(advanced >= 2, "the slot stayed at {first} with heartbeats on");
    // Heartbeats are not table data: nothing was produced.
    assert!(env.read_all("quiet").await.is_empty());
    // The loop stops after two advances, which can come before a second
    // heartbeat is counted; one is enough to show they pass through.
    assert!(summary.events >= 1, "the heartbeat messages came through the slot");
    assert_eq!(summary.transactions, 0, "no table transaction happened");
}

#[tokio::test]
async fn existing_rows_arrive_as_snapshot_reads_before_the_stream() {
    let env = Env::start("snapkafka").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await
        .expect("schema");
    let cap = env.spawn("snapk_slot", &[]);
    env.wait_streaming("snapk_slot").await;
    sql.batch_execute("UPDATE t SET v = 'b2' WHERE id = 2")
        .await
        .expect("update");
    let got = env.read("t", 4).await;
    cap.stop().await;
    assert_eq!(got.iter().map(op).collect::<Vec<_>>(), ["r", "r", "r", "u"]);
    let snapshot_flag = |d: &Decoded| match field(field(d.value.as_ref().expect("value"), "source"), "snapshot") {
        Value::String(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        got.iter().map(snapshot_flag).collect::<Vec<_>>(),
        ["true", "true", "last", "false"]
    );
    assert_eq!(string(opt(after(&got[1]), "v")), "b");
    assert_eq!(string(opt(after(&got[3]), "v")), "b2");
    assert_eq!(field(got[3].key.as_ref().expect("key"), "id"), &Value::Int(2));
}

/// The copy workers encode rows in parallel; the capture loop sends each
/// chunk's last row itself and every row the encoder refuses. Whatever the
/// path, each row arrives once, in plan order per key, and refused rows
/// reach the dead-letter topic.
#[tokio::test]
async fn a_parallel_snapshot_sends_each_row_once_in_order_and_dead_letters_unkeyable_rows() {
    const ROWS: i64 = 8_000;
    let env = Env::start("parsnap").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, 'value ' || g FROM generate_series(1, {ROWS}) g;
         CREATE TABLE nokey (n int, v text);
         INSERT INTO nokey SELECT g, 'row ' || g FROM generate_series(1, 700) g;
         CREATE TABLE odd (id numeric(10, 0) PRIMARY KEY, v text);
         INSERT INTO odd SELECT g, 'x' FROM generate_series(1, 300) g;
         INSERT INTO odd VALUES ('NaN', 'not a key Avro can hold');
         INSERT INTO odd SELECT g, 'x' FROM generate_series(301, 600) g;"
    ))
    .await
    .expect("schema");
    let cap = env.spawn(
        "parsnap_slot",
        &["--snapshot-connections", "2", "--snapshot-chunk-pages", "4"],
    );
    env.wait_streaming("parsnap_slot").await;
    let big = env.read("big", ROWS as usize).await;
    let nokey = env.read("nokey", 700).await;
    let odd = env.read_within("odd", 601, Duration::from_secs(5)).await;
    let (bootstrap, dlq) = (env.broker.bootstrap(), format!("{}.dead_letter", env.prefix));
    let dead = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &dlq, 1, LIMIT))
        .await
        .expect("reader");
    let extra = env.read_all("big").await;
    cap.stop().await;

    let source = |d: &Decoded, name: &str| field(field(d.value.as_ref().expect("value"), "source"), name).clone();
    let long = |v: Value| match v {
        Value::Long(n) => n,
        other => panic!("long expected, got {other:?}"),
    };
    let int = |v: &Value| match v {
        Value::Int(n) => i64::from(*n),
        other => panic!("int expected, got {other:?}"),
    };
    // Every id exactly once, as a read, keyed by itself.
    assert_eq!(extra.len(), ROWS as usize, "no row of big was sent twice");
    let mut ids: Vec<i64> = big
        .iter()
        .map(|d| int(field(d.key.as_ref().expect("key"), "id")))
        .collect();
    assert!(big.iter().all(|d| op(d) == "r"));
    for d in &big {
        let key = int(field(d.key.as_ref().expect("key"), "id"));
        assert_eq!(string(opt(after(d), "v")), format!("value {key}"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=ROWS).collect::<Vec<_>>());
    // Ordinals: unique over the whole snapshot, increasing within each
    // partition (the order Kafka keeps), the same for encoded and raw rows.
    let all: Vec<&Decoded> = big.iter().chain(&nokey).chain(&odd).collect();
    let mut ordinals: Vec<i64> = all.iter().map(|d| long(source(d, "tx_ordinal"))).collect();
    ordinals.sort_unstable();
    ordinals.dedup();
    assert_eq!(ordinals.len(), all.len(), "tx_ordinal repeats");
    for topic in [&big, &nokey, &odd] {
        let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
        for d in topic.iter() {
            by_partition
                .entry(d.raw.partition)
                .or_default()
                .push(long(source(d, "tx_ordinal")));
        }
        for seq in by_partition.values() {
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "ordinals out of order in a partition"
            );
        }
    }
    // Exactly one row is the snapshot's last, and it has the highest ordinal.
    let lasts: Vec<&&Decoded> = all
        .iter()
        .filter(|d| source(d, "snapshot") == Value::String("last".into()))
        .collect();
    assert_eq!(lasts.len(), 1);
    assert_eq!(long(source(lasts[0], "tx_ordinal")), *ordinals.last().expect("rows"));
    // No key: null keys, every row there.
    assert!(nokey.iter().all(|d| d.raw.key.is_none()));
    let mut ns: Vec<i64> = nokey.iter().map(|d| int(opt(after(d), "n").expect("n"))).collect();
    ns.sort_unstable();
    assert_eq!(ns, (1..=700).collect::<Vec<_>>());
    // The NaN key cannot be a key: a dead letter naming the cause; the
    // table's other rows all arrive.
    assert_eq!(odd.len(), 600, "every row of odd but the NaN one");
    assert_eq!(dead.len(), 1, "one dead letter");
    let body: serde_json::Value =
        serde_json::from_slice(dead[0].value.as_deref().expect("dead letter body")).expect("JSON");
    assert_eq!(body["topic"], env.topic("odd"));
    assert!(body["reason"].as_str().expect("reason").contains("id"), "{body}");
    assert_eq!(body["change"]["after"]["id"], "NaN", "{body}");
}

/// Folds a CDC topic by key, in partition order (Kafka's per-key order):
/// reads and inserts/updates set the row, deletes and tombstones remove
/// it. Schemas are parsed once per id. Also returns how many records were
/// incremental-snapshot reads.
async fn fold_topic(env: &Env, records: &[Record]) -> (std::collections::BTreeMap<i64, String>, usize) {
    let registry = Registry::new(&RegistryConfig {
        url: env.registry_url.clone(),
        ..Default::default()
    })
    .expect("registry");
    let mut schemas: HashMap<u32, apache_avro::Schema> = HashMap::new();
    let mut decode = async |bytes: &[u8]| -> Value {
        let (id, mut body) = split_wire(bytes).expect("Confluent wire format");
        if let std::collections::hash_map::Entry::Vacant(slot) = schemas.entry(id) {
            let text = registry.schema(id).await.expect("schema by id");
            slot.insert(apache_avro::Schema::parse_str(&text).expect("schema parses"));
        }
        apache_avro::reader::datum::GenericDatumReader::builder(&schemas[&id])
            .build()
            .expect("reader")
            .read_value(&mut body)
            .expect("body decodes")
    };
    let mut by_partition: Vec<&Record> = records.iter().collect();
    by_partition.sort_by_key(|r| (r.partition, r.offset));
    let mut state = std::collections::BTreeMap::new();
    let mut incremental = 0;
    for r in by_partition {
        let key = decode(r.key.as_deref().expect("keyed")).await;
        let Value::Int(id) = field(&key, "id").clone() else {
            panic!("int key")
        };
        let Some(value) = &r.value else {
            state.remove(&i64::from(id));
            continue;
        };
        let value = decode(value).await;
        if field(field(&value, "source"), "snapshot") == &Value::String("incremental".into()) {
            incremental += 1;
        }
        match field(&value, "op") {
            Value::String(op) if op == "d" => {
                state.remove(&i64::from(id));
            }
            Value::String(_) => {
                let Value::Union(1, after) = field(&value, "after") else {
                    panic!("after present")
                };
                let v = match field(after, "v") {
                    Value::Union(1, v) => match v.as_ref() {
                        Value::String(s) => s.clone(),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                };
                state.insert(i64::from(id), v);
            }
            other => panic!("{other:?}"),
        }
    }
    (state, incremental)
}

/// (done, planned) snapshot chunks of `slot`.
async fn chunks_done(sql: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    sql.query_opt(
        "SELECT count(*) FILTER (WHERE done_at IS NOT NULL), count(*) FROM walhouse.snapshot_chunks WHERE slot = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .map_or((0, 0), |r| (r.get(0), r.get(1)))
}

/// Capture into Kafka cut off mid-snapshot (its task aborted: librdkafka
/// and all), changes made meanwhile, then restarted: the chunks Kafka had
/// acknowledged are not read again, the rest are read incrementally, and
/// the topic folded by key is exactly the table.
#[tokio::test]
async fn a_snapshot_into_kafka_cut_off_midway_ends_exactly_the_table() {
    const ROWS: i64 = 100_000;
    let env = Env::start("cutkafka").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .expect("schema");
    let opts = ["--snapshot-chunk-pages", "16", "--snapshot-connections", "2"];
    let first = env.spawn("cutk_slot", &opts);
    // Cut once Kafka has acknowledged a few chunks.
    for _ in 0..3000 {
        if chunks_done(&sql, "cutk_slot").await.0 >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.task.abort();
    let _ = first.task.await;
    let (done, total) = chunks_done(&sql, "cutk_slot").await;
    assert!(
        done >= 3 && done < total,
        "cut mid-snapshot: {done} of {total} chunks done"
    );
    sql.batch_execute(
        "UPDATE big SET v = 'changed' WHERE id % 1000 = 0;
         DELETE FROM big WHERE id % 777 = 0;
         INSERT INTO big SELECT g, 'new' FROM generate_series(100001, 100500) g;",
    )
    .await
    .expect("changes while stopped");
    // The killed walsender may take a moment to release the slot.
    for _ in 0..100 {
        if !env.pg.slot_exists(&env.db, "cutk_slot", true).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let second = env.spawn("cutk_slot", &opts);
    let mut finished = false;
    for _ in 0..1800 {
        let phase: Option<String> = sql
            .query_opt("SELECT phase FROM walhouse.snapshots WHERE slot = 'cutk_slot'", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if phase.as_deref() == Some("done") {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished, "the resumed snapshot finishes");
    assert!(
        env.pg.wait_confirmed(&env.db, "cutk_slot", LIMIT).await,
        "the slot confirms what was sent"
    );
    second.stop().await;

    let (bootstrap, topic) = (env.broker.bootstrap(), env.topic("big"));
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
        .await
        .expect("reader");
    let table: std::collections::BTreeMap<i64, String> = sql
        .query("SELECT id, v FROM big", &[])
        .await
        .expect("table")
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1)))
        .collect();
    let (folded, incremental) = fold_topic(&env, &records).await;
    assert_eq!(folded.len(), table.len());
    assert!(folded == table, "the folded topic differs from the table");
    assert!(incremental > 0, "the chunks not done were read incrementally");
    // Acknowledged chunks were not copied again: far fewer records than
    // two whole copies.
    assert!(
        (records.len() as i64) < ROWS * 2,
        "{} records for {ROWS} rows",
        records.len()
    );
}

/// Postgres stopped (`-m immediate`, a crash) and started again under a
/// running capture: capture reconnects both its connections, the
/// replication one and the SQL one it reads the catalog through, and every
/// change made before, during the recovery and after arrives. (Before the
/// SQL connection was renewed, every reconnect failed on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_and_restart_is_ridden_out() {
    let mut env = Env::start("restart").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let running = env.spawn(
        "restart_slot",
        &["--reconnect-backoff-max-ms", "500", "--max-reconnect-attempts", "60"],
    );
    env.wait_streaming("restart_slot").await;
    sql.batch_execute("INSERT INTO items SELECT generate_series(1, 50)")
        .await
        .expect("before");
    assert!(env.pg.wait_confirmed(&env.db, "restart_slot", LIMIT).await);
    drop(sql);
    env.pg.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.pg.resume();
    let sql = env.pg.client(&env.db).await;
    // New tables need catalog reads: the renewed SQL connection's work.
    sql.batch_execute(
        "INSERT INTO items SELECT generate_series(51, 100); \
         CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1), (2);",
    )
    .await
    .expect("after");
    assert!(
        env.pg.wait_confirmed(&env.db, "restart_slot", LIMIT).await,
        "capture did not confirm the changes made after the restart"
    );
    running.stop().await;
    let ids: std::collections::BTreeSet<i64> = env
        .read("items", 100)
        .await
        .iter()
        .filter_map(|d| d.value.as_ref())
        .filter_map(|v| match opt(opt(v, "after")?, "id")? {
            Value::Int(i) => Some(i64::from(*i)),
            _ => None,
        })
        .collect();
    assert_eq!(ids, (1..=100).collect(), "every insert arrived");
    assert_eq!(env.read("later", 2).await.len(), 2, "a table made after the restart");
}

/// Spool files (`*.spool`) in a spool directory.
fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
        .count()
}

/// Bytes on disk in a spool directory's spool files.
fn spool_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Postgres set to stream any transaction past 64 kB (every change on 18).
fn streaming_source() -> PgOptions {
    let mut extra_conf = vec!["logical_decoding_work_mem = '64kB'".to_string()];
    if support::postgres::test_major() >= 16 {
        extra_conf.push("debug_logical_replication_streaming = 'immediate'".into());
    }
    PgOptions {
        extra_conf,
        ..PgOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_deliver_only_committed_rows_in_commit_order() {
    let env = Env::start_with("streamed", streaming_source()).await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, who text NOT NULL)")
        .await
        .expect("schema");
    let spool = tempfile::tempdir().expect("spool dir");
    let spool_dir = spool.path().to_str().expect("utf-8 path").to_owned();
    let running = env.spawn(
        "streamed_slot",
        &[
            "--topic-partitions",
            "1",
            "--stream-transactions",
            "true",
            "--spool-dir",
            &spool_dir,
        ],
    );
    env.wait_streaming("streamed_slot").await;
    sql.batch_execute(
        "BEGIN;
         INSERT INTO big SELECT g, 'one' FROM generate_series(1, 3000) g;
         SAVEPOINT s;
         INSERT INTO big SELECT g, 'savepoint' FROM generate_series(3001, 5000) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO big SELECT g, 'one' FROM generate_series(5001, 6000) g;
         COMMIT;
         BEGIN;
         INSERT INTO big SELECT g, 'aborted' FROM generate_series(10001, 13000) g;
         ROLLBACK;",
    )
    .await
    .expect("first transactions");
    let (a, b) = (env.pg.client(&env.db).await, env.pg.client(&env.db).await);
    a.batch_execute("BEGIN").await.expect("begin a");
    b.batch_execute("BEGIN").await.expect("begin b");
    for chunk in 0..4 {
        let (from_a, from_b) = (20001 + chunk * 1000, 30001 + chunk * 1000);
        a.execute(
            "INSERT INTO big SELECT g, 'a' FROM generate_series($1::int, $1::int + 999) g",
            &[&from_a],
        )
        .await
        .expect("insert a");
        b.execute(
            "INSERT INTO big SELECT g, 'b' FROM generate_series($1::int, $1::int + 999) g",
            &[&from_b],
        )
        .await
        .expect("insert b");
    }
    b.batch_execute("COMMIT").await.expect("commit b");
    a.batch_execute("COMMIT").await.expect("commit a");
    assert!(
        env.pg.wait_confirmed(&env.db, "streamed_slot", LIMIT).await,
        "capture did not confirm the streamed transactions"
    );
    let got = env.read_all("big").await;
    running.stop().await;
    let ids: Vec<i32> = got
        .iter()
        .map(|d| match field(d.key.as_ref().expect("key"), "id") {
            Value::Int(id) => *id,
            other => panic!("int key, got {other:?}"),
        })
        .collect();
    let mut expected: Vec<i32> = (1..=3000)
        .chain(5001..=6000)
        .chain(20001..=24000)
        .chain(30001..=34000)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "exactly the committed rows, each once");
    assert!(got.iter().all(|d| op(d) == "c"), "inserts only");
    let last_b = ids.iter().rposition(|id| (30001..=34000).contains(id)).expect("b");
    let first_a = ids.iter().position(|id| (20001..=24000).contains(id)).expect("a");
    assert!(last_b < first_a, "b committed first, so all of b comes before a");
    let row = sql
        .query_one(
            "SELECT stream_txns, spill_txns, stream_bytes, spill_bytes FROM pg_stat_replication_slots WHERE slot_name = 'streamed_slot'",
            &[],
        )
        .await
        .expect("slot stats");
    let (streamed, spilled, stream_bytes, spill_bytes): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    eprintln!("slot stats: stream_txns {streamed} ({stream_bytes} B), spill_txns {spilled} ({spill_bytes} B)");
    assert!(streamed >= 2, "the large transactions were streamed: {streamed}");
    assert!(
        spill_bytes < stream_bytes / 10,
        "the source spilled {spill_bytes} B against {stream_bytes} B streamed"
    );
    assert_eq!(spool_files(spool.path()), 0, "the spool is empty");
}

/// Capture is killed while a large transaction streams into its spool:
/// the leftover spool is removed at restart, the server streams the
/// transaction again from its start, and every committed row arrives
/// once, with the commit's positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_streamed_transaction_loses_and_duplicates_nothing() {
    let env = Env::start_with("streamkill", streaming_source()).await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, who text NOT NULL)")
        .await
        .expect("schema");
    let spool = tempfile::tempdir().expect("spool dir");
    let spool_dir = spool.path().to_str().expect("utf-8 path").to_owned();
    let spawn_binary = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
        let extra = [
            "--topic-partitions",
            "1",
            "--stream-transactions",
            "true",
            "--spool-dir",
            &spool_dir,
        ];
        cmd.args(env.args("streamkill_slot", &extra).argv())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().expect("walhouse-capture starts")
    };
    let spooled = || spool_files(spool.path());
    // `status` shows the spool and the slot's decoding counters.
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
            .args([
                "status",
                "--json",
                "--source-url",
                &env.pg.url("walhouse_scram", &env.db),
            ])
            .args(["--slot", "streamkill_slot", "--spool-dir", &spool_dir])
            .output()
            .expect("status runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON status")
    };
    let mut child = spawn_binary();
    env.wait_streaming("streamkill_slot").await;
    sql.batch_execute("INSERT INTO big SELECT g, 'before' FROM generate_series(1, 100) g")
        .await
        .expect("before");
    // Everything before the large transaction is confirmed, so the restart
    // sends nothing of it again and any duplicate would be the spool's.
    assert!(
        env.pg.wait_confirmed(&env.db, "streamkill_slot", LIMIT).await,
        "capture did not confirm the first rows"
    );
    let large = env.pg.client(&env.db).await;
    large.batch_execute("BEGIN").await.expect("begin");
    for chunk in 0..8 {
        let from = 1001 + chunk * 1000;
        large
            .execute(
                "INSERT INTO big SELECT g, 'large' FROM generate_series($1::int, $1::int + 999) g",
                &[&from],
            )
            .await
            .expect("insert");
    }
    let deadline = std::time::Instant::now() + LIMIT;
    // Spooled and past the write buffer, so on disk.
    while spool_bytes(spool.path()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the transaction was never spooled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(spooled() > 0, "the killed capture left its spool behind");
    let left = status();
    assert!(left["spool_bytes"].as_u64().is_some_and(|b| b > 0), "{left}");
    large
        .execute(
            "INSERT INTO big SELECT g, 'large' FROM generate_series(9001, 10000) g",
            &[],
        )
        .await
        .expect("insert after the kill");
    large.batch_execute("COMMIT").await.expect("commit");
    sql.batch_execute("INSERT INTO big SELECT g, 'after' FROM generate_series(11001, 11100) g")
        .await
        .expect("after");
    let mut child = spawn_binary();
    let confirmed = env.pg.wait_confirmed(&env.db, "streamkill_slot", LIMIT).await;
    let got = env.read_all("big").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(confirmed, "the restarted capture did not confirm the transaction");
    let ids: Vec<i32> = got
        .iter()
        .map(|d| match field(d.key.as_ref().expect("key"), "id") {
            Value::Int(id) => *id,
            other => panic!("int key, got {other:?}"),
        })
        .collect();
    let expected: Vec<i32> = (1..=100).chain(1001..=10000).chain(11001..=11100).collect();
    let first_difference = ids.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        ids == expected,
        "every committed row once, in commit order: {} ids for {} expected, first difference at {first_difference:?}",
        ids.len(),
        expected.len()
    );
    let source = |d: &Decoded, name: &str| field(field(d.value.as_ref().expect("value"), "source"), name).clone();
    let large_rows: Vec<&Decoded> = got
        .iter()
        .filter(|d| matches!(field(d.key.as_ref().expect("key"), "id"), Value::Int(id) if (1001..=10000).contains(id)))
        .collect();
    let commits: std::collections::HashSet<String> = large_rows
        .iter()
        .map(|d| format!("{:?}", source(d, "commit_lsn")))
        .collect();
    assert_eq!(commits.len(), 1, "one commit position for the whole transaction");
    let ordinals: Vec<i64> = large_rows
        .iter()
        .map(|d| match source(d, "tx_ordinal") {
            Value::Long(n) => n,
            other => panic!("long ordinal, got {other:?}"),
        })
        .collect();
    // Two ordinals per change (a key change's second record has its own).
    let expected: Vec<i64> = (1..=9000).map(|n| 2 * n).collect();
    assert!(
        ordinals == expected,
        "ordinals number the transaction from its start: {} of them, first {:?}, last {:?}",
        ordinals.len(),
        ordinals.first(),
        ordinals.last()
    );
    assert_eq!(
        spooled(),
        0,
        "the restart cleared the leftover spool and replayed its own"
    );
    let after = status();
    assert_eq!(after["spool_bytes"], 0, "{after}");
    assert!(
        after["decoding"]["stream_txns"].as_u64().is_some_and(|n| n >= 1),
        "the slot counts the streamed transaction: {after}"
    );
}

/// One streamed transaction holding what else capture handles: an update
/// leaving a TOASTed value unchanged, a primary-key change, a column added
/// half-way (a Relation message inside the stream), a truncate of another
/// table, bracketed on the transaction topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_carries_toast_key_changes_ddl_and_truncates() {
    let env = Env::start_with("streamedmix", streaming_source()).await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, big text);
         CREATE TABLE u (id int PRIMARY KEY);
         INSERT INTO t SELECT 1, 'first', string_agg(md5(g::text), '') FROM generate_series(1, 4000) g;
         INSERT INTO t VALUES (2, 'second', NULL);
         INSERT INTO u VALUES (1), (2);",
    )
    .await
    .expect("schema");
    let spool = tempfile::tempdir().expect("spool dir");
    let spool_dir = spool.path().to_str().expect("utf-8 path").to_owned();
    let running = env.spawn(
        "mix_slot",
        &[
            "--topic-partitions",
            "1",
            "--transaction-topic",
            "true",
            "--stream-transactions",
            "true",
            "--spool-dir",
            &spool_dir,
        ],
    );
    env.wait_streaming("mix_slot").await;
    sql.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT g, 'bulk', NULL FROM generate_series(10, 3009) g;
         UPDATE t SET v = 'touched' WHERE id = 1;
         UPDATE t SET id = 20000 WHERE id = 2;
         ALTER TABLE t ADD COLUMN extra int;
         INSERT INTO t SELECT g, 'with extra', NULL, g FROM generate_series(5000, 7999) g;
         TRUNCATE u;
         COMMIT;",
    )
    .await
    .expect("streamed transaction");
    assert!(
        env.pg.wait_confirmed(&env.db, "mix_slot", LIMIT).await,
        "capture did not confirm the streamed transaction"
    );
    let t = env.read_all("t").await;
    let u = env.read_all("u").await;
    let tx = env.read_topic(&format!("{}.transaction", env.prefix), 2, LIMIT).await;
    running.stop().await;
    let streamed: i64 = sql
        .query_one(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'mix_slot'",
            &[],
        )
        .await
        .expect("slot stats")
        .get(0);
    assert!(streamed >= 1, "the transaction was streamed");
    let id = |d: &Decoded| match field(d.key.as_ref().expect("key"), "id") {
        Value::Int(id) => *id,
        other => panic!("int key, got {other:?}"),
    };
    let summary: Vec<(String, i32)> = t
        .iter()
        .map(|d| (d.value.as_ref().map_or("tombstone".to_string(), |_| op(d)), id(d)))
        .collect();
    let mut expected: Vec<(String, i32)> = vec![("r".into(), 1), ("r".into(), 2)];
    expected.extend((10..=3009).map(|g| ("c".into(), g)));
    expected.extend([
        ("u".into(), 1),
        ("d".into(), 2),
        ("tombstone".into(), 2),
        ("c".into(), 20000),
    ]);
    expected.extend((5000..=7999).map(|g| ("c".into(), g)));
    assert_eq!(summary, expected, "every change once, in the transaction's order");
    let touched = &t[3002];
    assert_eq!(string(opt(after(touched), "v")), "touched");
    let Some(Value::Array(unchanged)) = opt(touched.value.as_ref().expect("value"), "unchanged_toast") else {
        panic!("unchanged_toast")
    };
    assert_eq!(
        unchanged,
        &vec![Value::String("big".into())],
        "the TOASTed value was left unchanged"
    );
    let has_extra = |d: &Decoded| matches!(after(d), Value::Record(fields) if fields.iter().any(|(n, _)| n == "extra"));
    assert!(!has_extra(&t[3001]), "rows before the column was added lack it");
    assert_eq!(
        opt(after(&t[3006]), "extra"),
        Some(&Value::Int(5000)),
        "the added column carries its value"
    );
    assert_eq!(opt(after(t.last().expect("rows")), "extra"), Some(&Value::Int(7999)));
    let u_ops: Vec<String> = u.iter().map(op).collect();
    assert_eq!(u_ops, ["r", "r", "t"], "the truncate inside the stream arrives");
    let status: Vec<&Value> = tx
        .iter()
        .map(|d| field(d.value.as_ref().expect("value"), "status"))
        .collect();
    assert_eq!(
        status,
        [&Value::String("BEGIN".into()), &Value::String("END".into())],
        "one transaction bracketed"
    );
    let Some(Value::Array(collections)) = opt(tx[1].value.as_ref().expect("value"), "data_collections") else {
        panic!("collections")
    };
    let counts: HashMap<String, i64> = collections
        .iter()
        .map(|c| match (field(c, "data_collection"), field(c, "event_count")) {
            (Value::String(t), Value::Long(n)) => (t.clone(), *n),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        counts.get("public.t").is_some_and(|n| (6002..=6004).contains(n)),
        "{counts:?}"
    );
    assert_eq!(spool_files(spool.path()), 0, "the spool is empty");
}

/// Columns dropped and renamed after the initial snapshot planned its
/// tables and before their COPY (COPY reads rows under the snapshot but
/// resolves names in the current catalog): each table is described again
/// and read with its columns as they are now, without table locks, and
/// every row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_dropped_or_renamed_during_the_snapshot_are_read_as_they_are_now() {
    let env = Env::start("ddlsnap").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TABLE dropped (id int PRIMARY KEY, gone text, kept int);
         CREATE TABLE renamed (id int PRIMARY KEY, old_name int);
         INSERT INTO dropped SELECT g, 'x' || g, g * 2 FROM generate_series(1, 3000) g;
         INSERT INTO renamed SELECT g, g * 3 FROM generate_series(1, 3000) g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("dir");
    let hold = dir.path().join("hold");
    std::fs::write(&hold, b"").expect("hold");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WALHOUSE_")) {
        cmd.env_remove(k);
    }
    // Small chunks over two connections: each table is read in several
    // chunks, some by each connection, every one of which meets the change.
    let extra = [
        "--topic-partitions",
        "1",
        "--snapshot-chunk-pages",
        "4",
        "--snapshot-connections",
        "2",
    ];
    let mut capture = cmd
        .args(env.args("ddl_slot", &extra).argv())
        .env(
            "WALHOUSE_FAILPOINTS",
            format!("snapshot.planned=pause-while:{}", hold.display()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("walhouse-capture starts");
    let reached = walhouse::failpoint::reached(&hold);
    let deadline = std::time::Instant::now() + LIMIT;
    while !reached.exists() {
        assert!(std::time::Instant::now() < deadline, "the snapshot was never planned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not blocked: the snapshot holds no lock on the tables.
    tokio::time::timeout(
        Duration::from_secs(10),
        sql.batch_execute(
            "ALTER TABLE dropped DROP COLUMN gone; ALTER TABLE renamed RENAME COLUMN old_name TO new_name",
        ),
    )
    .await
    .expect("the DDL waits for no lock")
    .expect("DDL");
    std::fs::remove_file(&hold).expect("release");
    env.wait_streaming("ddl_slot").await;
    sql.batch_execute("INSERT INTO dropped VALUES (5000, 10000); INSERT INTO renamed VALUES (5000, 15000)")
        .await
        .expect("after");
    let confirmed = env.pg.wait_confirmed(&env.db, "ddl_slot", LIMIT).await;
    let dropped = env.read_all("dropped").await;
    let renamed = env.read_all("renamed").await;
    let _ = capture.kill().await;
    assert!(confirmed, "capture did not go on streaming after the snapshot");
    let has = |d: &Decoded, column: &str| matches!(after(d), Value::Record(f) if f.iter().any(|(n, _)| n == column));
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => *n,
        other => panic!("int expected, got {other:?}"),
    };
    for (records, column, factor, gone) in [(&dropped, "kept", 2, "gone"), (&renamed, "new_name", 3, "old_name")] {
        let ids: Vec<i32> = records
            .iter()
            .map(|d| int(Some(field(d.key.as_ref().expect("key"), "id"))))
            .collect();
        let expected: Vec<i32> = (1..=3000).chain([5000]).collect();
        assert!(
            ids == expected,
            "{column}: every row once, in order: {} ids, first difference at {:?}",
            ids.len(),
            ids.iter().zip(&expected).position(|(a, b)| a != b)
        );
        for d in records.iter() {
            let id = int(Some(field(d.key.as_ref().expect("key"), "id")));
            assert_eq!(int(opt(after(d), column)), id * factor, "{column} of {id}");
            assert!(!has(d, gone), "{gone} is no longer a column: {id}");
        }
        let ops: Vec<String> = records.iter().map(op).collect();
        assert!(
            ops[..3000].iter().all(|o| o == "r") && ops[3000] == "c",
            "{column}: snapshot reads, then the insert"
        );
    }
}

/// A partitioned table: with the publication walhouse makes
/// (`publish_via_partition_root`), the snapshot reads every partition and
/// every change, whichever partition it lands in (one attached while
/// streaming too), goes to the parent's topic; a detached partition's
/// changes stop. With a publication made without it, each partition is a
/// table of its own, with its own topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_goes_to_one_topic_through_attach_and_detach() {
    let env = Env::start("parts").await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TABLE m (id int, region text, n int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
         INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 200) g;
         CREATE PUBLICATION leaves FOR TABLE m;",
    )
    .await
    .expect("schema");
    let via_root = env.spawn("parts_slot", &["--tables", "public.m", "--publication", "parts_pub"]);
    let leaves_prefix = format!("{}_leaves", env.prefix);
    let leaves_config = env
        .args("leaves_slot", &["--publication", "leaves"])
        .with("--topic-prefix", &leaves_prefix)
        .config();
    let mut leaves_dest = capture::kafka_destination(&leaves_config).expect("producer");
    let (leaves_stop, rx) = watch::channel(false);
    let leaves = Running {
        stop: leaves_stop,
        task: tokio::spawn(async move { capture::run(&leaves_config, &mut leaves_dest, rx).await }),
    };
    env.wait_streaming("parts_slot").await;
    env.wait_streaming("leaves_slot").await;
    sql.batch_execute(
        "INSERT INTO m VALUES (1001, 'eu', 1001);
         UPDATE m SET region = 'eu' WHERE id = 1 AND region = 'us';
         CREATE TABLE m_asia (id int, region text, n int, PRIMARY KEY (id, region));
         ALTER TABLE m ATTACH PARTITION m_asia FOR VALUES IN ('asia');
         INSERT INTO m VALUES (2001, 'asia', 2001);
         ALTER TABLE m DETACH PARTITION m_us;
         INSERT INTO m_us VALUES (3001, 'us', 3001);
         INSERT INTO m VALUES (4001, 'eu', 4001);",
    )
    .await
    .expect("changes");
    let confirmed = env.pg.wait_confirmed(&env.db, "parts_slot", LIMIT).await
        && env.pg.wait_confirmed(&env.db, "leaves_slot", LIMIT).await;
    let got = env.read_all("m").await;
    let eu = env
        .read_topic(&format!("{leaves_prefix}.public.m_eu"), 100 + 3, LIMIT)
        .await;
    let topics = support::kafka::topics(&env.broker.bootstrap());
    via_root.stop().await;
    leaves.stop().await;
    assert!(confirmed, "capture did not confirm the changes");
    let summary: Vec<(String, i32, String)> = got
        .iter()
        .map(|d| {
            let key = d.key.as_ref().expect("key");
            let id = match field(key, "id") {
                Value::Int(id) => *id,
                other => panic!("int id, got {other:?}"),
            };
            let region = match field(key, "region") {
                Value::String(r) => r.clone(),
                other => panic!("text region, got {other:?}"),
            };
            (d.value.as_ref().map_or("tombstone".into(), |_| op(d)), id, region)
        })
        .collect();
    let mut snapshot: Vec<(String, i32, String)> = summary.iter().take(200).cloned().collect();
    snapshot.sort_by_key(|(_, id, _)| *id);
    let expected: Vec<(String, i32, String)> = (1..=200)
        .map(|g| ("r".into(), g, if g % 2 == 0 { "eu" } else { "us" }.into()))
        .collect();
    assert_eq!(
        snapshot, expected,
        "the snapshot reads every partition into the parent's topic"
    );
    let changes: Vec<(String, i32, String)> = summary.into_iter().skip(200).collect();
    let change = |op: &str, id: i32, region: &str| (op.to_string(), id, region.to_string());
    assert_eq!(
        changes,
        [
            change("c", 1001, "eu"),
            change("d", 1, "us"),
            change("tombstone", 1, "us"),
            change("c", 1, "eu"),
            change("c", 2001, "asia"),
            change("c", 4001, "eu"),
        ],
        "every partition's changes, the attached one's too, none of the detached one's"
    );
    for leaf in ["m_eu", "m_us", "m_asia"] {
        assert!(
            !topics.contains(&env.topic(leaf)),
            "no topic of its own for partition {leaf}: {topics:?}"
        );
    }
    // Without publish_via_partition_root, partitions are tables of their own.
    assert!(topics.contains(&format!("{leaves_prefix}.public.m_us")), "{topics:?}");
    assert!(!topics.contains(&format!("{leaves_prefix}.public.m")), "{topics:?}");
    let eu_ids: Vec<i32> = eu
        .iter()
        .filter(|d| d.value.is_some())
        .map(|d| match field(d.key.as_ref().expect("key"), "id") {
            Value::Int(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        eu_ids.contains(&1001) && eu_ids.contains(&1) && eu_ids.contains(&4001),
        "{eu_ids:?}"
    );
}

/// An incremental snapshot of a table while a large transaction on it
/// streams: its changes wait in the spool and enter the stream at their
/// commit, so the snapshot's watermark window sees them where they
/// committed, and the topic folded by key is exactly the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_snapshot_beside_a_streamed_transaction_folds_to_the_table() {
    let env = Env::start_with("streamsnap", streaming_source()).await;
    let sql = env.pg.client(&env.db).await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'initial ' || g FROM generate_series(1, 4000) g;",
    )
    .await
    .expect("schema");
    let spool = tempfile::tempdir().expect("spool dir");
    let spool_dir = spool.path().to_str().expect("utf-8 path").to_owned();
    let extra = [
        "--topic-partitions",
        "1",
        "--stream-transactions",
        "true",
        "--spool-dir",
        &spool_dir,
        "--snapshot-chunk-pages",
        "2",
    ];
    let running = env.spawn("snapstream_slot", &extra);
    env.wait_streaming("snapstream_slot").await;
    let (_, initial_chunks) = chunks_done(&sql, "snapstream_slot").await;
    let large = env.pg.client(&env.db).await;
    large
        .batch_execute(
            "BEGIN;
             UPDATE t SET v = 'large ' || id WHERE id <= 2000;
             DELETE FROM t WHERE id > 3900;
             INSERT INTO t SELECT g, 'large new' FROM generate_series(5001, 6000) g;",
        )
        .await
        .expect("large transaction");
    let config = env.args("snapstream_slot", &extra).config();
    capture::admin::request_snapshot(&config, &["public.t".to_string()])
        .await
        .expect("snapshot request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    large.batch_execute("COMMIT").await.expect("commit");
    sql.batch_execute("UPDATE t SET v = 'after ' || id WHERE id % 3 = 0")
        .await
        .expect("after");
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let (done, planned) = chunks_done(&sql, "snapstream_slot").await;
        if planned > initial_chunks && done == planned {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the incremental snapshot did not finish: {done} of {planned} chunks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        env.pg.wait_confirmed(&env.db, "snapstream_slot", LIMIT).await,
        "capture did not confirm"
    );
    let (bootstrap, topic) = (env.broker.bootstrap(), env.topic("t"));
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
        .await
        .expect("reader");
    running.stop().await;
    let (folded, incremental) = fold_topic(&env, &records).await;
    let table: std::collections::BTreeMap<i64, String> = sql
        .query("SELECT id, v FROM t", &[])
        .await
        .expect("table")
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), r.get::<_, String>(1)))
        .collect();
    assert!(incremental > 0, "the table was read again");
    assert_eq!(folded.len(), table.len(), "as many keys as rows");
    let differing: Vec<&i64> = table.keys().filter(|k| folded.get(k) != table.get(k)).take(5).collect();
    assert!(
        differing.is_empty(),
        "the topic folds to the table; first keys that differ: {differing:?}"
    );
    assert_eq!(spool_files(spool.path()), 0, "the spool is empty");
}
