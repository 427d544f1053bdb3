//! Where production runs: a Postgres 17+ primary with a hot standby made by
//! `pg_basebackup`, capture's slot created with `FAILOVER` and synchronised
//! to the standby; the primary crashes, the standby is promoted, and
//! capture, given both hosts, carries on there on the synced slot, with no
//! new snapshot and nothing lost.

use walhouse_test_support as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::command::CaptureCommand;
use support::fold::fold;
use support::kafka::{read_all, Broker};
use support::postgres::PgServer;
use support::registry::TestRegistry;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_and_promotion_capture_goes_on_on_the_synced_slot_without_a_snapshot() {
    support::init_logs();
    // The test synchronises the slot itself (pg_sync_replication_slots), so
    // that it knows when the standby has it.
    let Some((mut primary, standby)) = PgServer::with_standby(
        "shop",
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;",
        17,
        "failover slots",
    )
    .await
    else {
        return;
    };
    let sql = primary.client("shop").await;
    primary.psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby_1'");
    primary.psql("SELECT pg_reload_conf()");
    let broker = Broker::start();
    let registry = TestRegistry::start().await;
    let url = primary.url("walhouse_scram", "shop").replace(
        &format!("127.0.0.1:{}", primary.port),
        &format!("127.0.0.1:{},127.0.0.1:{}", primary.port, standby.port),
    ) + "&target_session_attrs=primary";
    let prefix = format!("fo{}", std::process::id());
    let spool = tempfile::tempdir().expect("spool dir");
    let argv: Vec<String> = CaptureCommand::from(&url)
        .into_kafka(&broker.bootstrap(), &registry.url, &prefix)
        .with("--slot", "fo_slot")
        .with("--slot-failover", "true")
        .with("--topic-partitions", "1")
        .with("--spool-dir", spool.path().to_str().expect("utf-8"))
        .argv()
        .to_vec();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("walhouse-capture starts")
    };
    let mut capture = spawn();
    assert!(
        primary.wait_streaming("shop", "fo_slot", LIMIT).await,
        "capture did not stream from the primary"
    );
    sql.batch_execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 200) g")
        .await
        .expect("streamed");
    assert!(
        primary.wait_confirmed("shop", "fo_slot", LIMIT).await,
        "confirmed on the primary"
    );
    assert!(primary.wait_replayed_by(&standby, LIMIT).await, "replay on the standby");
    // What the slot sync worker does every few seconds, asked for now: the
    // standby has the slot, persistent, at the primary's position.
    let confirmed: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fo_slot'",
            &[],
        )
        .await
        .expect("primary slot")
        .get(0);
    let standby_sql = standby.client("postgres").await;
    let deadline = Instant::now() + LIMIT;
    loop {
        // A running-transactions record lets the standby's copy of the slot
        // catch up and persist (the server writes one every 15 s).
        sql.batch_execute("SELECT pg_log_standby_snapshot()")
            .await
            .expect("standby snapshot");
        assert!(primary.wait_replayed_by(&standby, LIMIT).await, "replay on the standby");
        let _ = standby_sql.batch_execute("SELECT pg_sync_replication_slots()").await;
        let synced: Option<bool> = standby_sql
            .query_opt(
                "SELECT synced AND NOT temporary AND confirmed_flush_lsn >= $1::text::pg_lsn \
                 FROM pg_replication_slots WHERE slot_name = 'fo_slot'",
                &[&confirmed],
            )
            .await
            .expect("standby slots")
            .and_then(|r| r.get(0));
        if synced == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never synced to the standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Rows the standby has by physical replication but the synced slot has
    // not confirmed: the promoted server sends them again.
    sql.batch_execute("INSERT INTO t SELECT g, 'after sync' FROM generate_series(201, 300) g")
        .await
        .expect("after sync");
    assert!(primary.wait_replayed_by(&standby, LIMIT).await, "replay on the standby");
    primary.stop();
    standby.promote();
    let promoted = standby.client("shop").await;
    promoted
        .batch_execute("INSERT INTO t SELECT g, 'promoted' FROM generate_series(301, 400) g")
        .await
        .expect("write on the promoted server");
    let went_on = standby.wait_confirmed("shop", "fo_slot", LIMIT).await;
    // A restart against the promoted server resumes the slot too.
    let _ = capture.kill();
    let _ = capture.wait();
    let mut capture = spawn();
    promoted
        .batch_execute("INSERT INTO t SELECT g, 'restarted' FROM generate_series(401, 500) g")
        .await
        .expect("write after the restart");
    let restarted = standby.wait_confirmed("shop", "fo_slot", LIMIT).await;
    let (bootstrap, topic) = (broker.bootstrap(), format!("{prefix}.public.t"));
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
        .await
        .expect("reader");
    let _ = capture.kill();
    let _ = capture.wait();
    let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(went_on, "capture did not go on on the promoted server:\n{logged}");
    assert!(
        restarted,
        "capture restarted on the promoted server did not stream:\n{logged}"
    );

    let folded = fold(&registry.url, &records).await;
    assert_eq!(
        folded.all_reads(),
        100,
        "the snapshot ran once, on the first primary, never again"
    );
    let last = folded.latest;
    let ids: BTreeSet<i32> = last.keys().copied().collect();
    assert_eq!(ids, (1..=500).collect(), "every row, before and after the failover");
    let table: BTreeMap<i32, String> = promoted
        .query("SELECT id, v FROM t", &[])
        .await
        .expect("table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(last, table, "the topic folds to the promoted server's table");
}
