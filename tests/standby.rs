//! Capture from a hot standby (Postgres 16+): a primary and a standby made
//! by `pg_basebackup`; capture decodes and snapshots on the standby and
//! writes only its progress, watermarks and heartbeats on the primary.
//! Everything committed on the primary arrives, once, and folds to its
//! tables; the slot lives on the standby alone; a snapshot cut off there
//! resumes from the progress the primary keeps.

use walhouse_test_support as support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::command::CaptureCommand;
use support::fold::{fold, Folded};
use support::kafka::{read_all, Broker};
use support::postgres::{poll_true, PgServer};
use support::registry::TestRegistry;

const LIMIT: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_walhouse-capture");

/// Runs the binary to its end (killed after `LIMIT`): exit success, stdout, stderr.
fn run_to_end(args: &[String]) -> (bool, String, String) {
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("stdout"))
        .stderr(err.reopen().expect("stderr"))
        .spawn()
        .expect("walhouse-capture starts");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap_or_default();
    (status.is_some_and(|s| s.success()), read(&out), read(&err))
}

/// A primary, its standby, a broker and a registry, and capture's command
/// line on the standby (`--primary-url` the primary) into topics of its own.
struct Rig {
    primary: PgServer,
    standby: PgServer,
    broker: Broker,
    registry: TestRegistry,
    slot: &'static str,
    prefix: String,
    argv: Vec<String>,
    spool: tempfile::TempDir,
    log: tempfile::NamedTempFile,
}

impl Rig {
    /// `None` before Postgres 16.
    async fn start(schema: &str, slot: &'static str, extra: &[&str]) -> Option<Rig> {
        let (primary, standby) = PgServer::with_standby("shop", schema, 16, "logical decoding on a standby").await?;
        let broker = Broker::start();
        let registry = TestRegistry::start().await;
        let prefix = format!("{slot}{}", std::process::id());
        let spool = tempfile::tempdir().expect("spool dir");
        let argv = CaptureCommand::from(&standby.url("walhouse_scram", "shop"))
            .into_kafka(&broker.bootstrap(), &registry.url, &prefix)
            .with("--primary-url", primary.url("walhouse_scram", "shop"))
            .with("--slot", slot)
            .with("--snapshot-chunk-pages", "8")
            .with("--topic-partitions", "1")
            .with("--spool-dir", spool.path().to_str().expect("utf-8"))
            .args(extra)
            .argv()
            .to_vec();
        Some(Rig {
            primary,
            standby,
            broker,
            registry,
            slot,
            prefix,
            argv,
            spool,
            log: tempfile::NamedTempFile::new().expect("log file"),
        })
    }

    /// Starts capture (with `failpoints`), its log appended to the rig's.
    fn spawn(&self, failpoints: &str) -> std::process::Child {
        Command::new(BIN)
            .args(&self.argv)
            .env("WALHOUSE_FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.log.path())
                    .expect("log"),
            )
            .spawn()
            .expect("walhouse-capture starts")
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// A one-boolean `query` on the primary turned true within `LIMIT`.
    async fn primary_says(&self, query: &str) -> bool {
        poll_true(&self.primary.client("shop").await, query, LIMIT).await
    }

    /// `table`'s topic folded, and the primary's table.
    async fn topic_and_table(&self, table: &str) -> (Folded, BTreeMap<i32, String>) {
        let (bootstrap, topic) = (self.broker.bootstrap(), format!("{}.public.{table}", self.prefix));
        let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, LIMIT))
            .await
            .expect("reader");
        let rows = self
            .primary
            .client("shop")
            .await
            .query(&format!("SELECT id, v FROM {table}"), &[])
            .await
            .expect("table")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        (fold(&self.registry.url, &records).await, rows)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_on_a_standby_snapshots_and_streams_what_the_primary_commits() {
    support::init_logs();
    let Some(rig) = Rig::start(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'initial' FROM generate_series(1, 3000) g;
         CREATE TABLE u (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO u SELECT g, 'initial' FROM generate_series(1, 5000) g;",
        "sb_slot",
        &["--heartbeat-interval-ms", "300"],
    )
    .await
    else {
        return;
    };
    let (primary, standby, slot) = (&rig.primary, &rig.standby, rig.slot);
    let sql = primary.client("shop").await;
    let standby_url = standby.url("walhouse_scram", "shop");
    let primary_url = primary.url("walhouse_scram", "shop");

    // Without the primary, capture stops at start with the fix and leaves
    // nothing behind.
    let (ok, _, stderr) = run_to_end(&["--source-url".into(), standby_url.clone(), "--slot".into(), slot.into()]);
    assert!(!ok && stderr.contains("--primary-url"), "{stderr}");
    let logical_slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'";
    let slots: i64 = standby
        .client("shop")
        .await
        .query_one(logical_slots, &[])
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 0, "no slot made by a capture that stopped at start");

    let mut capture = rig.spawn("");
    // The slot is the standby's, its snapshot's progress the primary's.
    let snapshotted = standby.wait_for_slot("shop", slot, true, LIMIT).await
        && rig
            .primary_says(&format!(
                "SELECT phase = 'done' FROM walhouse.snapshots WHERE slot = '{slot}'"
            ))
            .await;
    assert!(
        snapshotted,
        "capture did not snapshot and stream from the standby:\n{}",
        rig.logged()
    );
    sql.batch_execute(
        "UPDATE t SET v = 'updated' WHERE id <= 100;
         DELETE FROM t WHERE id BETWEEN 101 AND 150;
         INSERT INTO t SELECT g, 'streamed' FROM generate_series(3001, 3100) g;",
    )
    .await
    .expect("changes on the primary");
    assert!(
        primary.wait_confirmed_on(standby, "shop", slot, LIMIT).await,
        "the standby's slot did not confirm the primary's changes:\n{}",
        rig.logged()
    );

    // An incremental snapshot requested through the standby, while u is
    // updated on the primary: its watermarks go through the primary.
    let u_chunks: i64 = sql
        .query_one(
            "SELECT count(*) FROM walhouse.snapshot_chunks WHERE slot = $1 AND table_name = 'u'",
            &[&slot],
        )
        .await
        .expect("u chunks")
        .get(0);
    let (ok, out, err) = run_to_end(&[
        "snapshot".into(),
        "--tables".into(),
        "public.u".into(),
        "--source-url".into(),
        standby_url.clone(),
        "--primary-url".into(),
        primary_url,
        "--slot".into(),
        slot.into(),
    ]);
    assert!(ok, "snapshot request: {out}{err}");
    for round in 0..10 {
        sql.execute(
            "UPDATE u SET v = 'round ' || $1::int WHERE id % 10 = $1::int",
            &[&round],
        )
        .await
        .expect("update u");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let merged = rig
        .primary_says(&format!(
            "SELECT count(*) > {u_chunks} AND bool_and(done_at IS NOT NULL) \
             FROM walhouse.snapshot_chunks WHERE slot = '{slot}' AND table_name = 'u'"
        ))
        .await;
    assert!(
        merged,
        "the incremental snapshot of u did not finish:\n{}",
        rig.logged()
    );

    // A restart resumes the slot on the standby, with no new snapshot.
    let _ = capture.kill();
    let _ = capture.wait();
    sql.batch_execute("INSERT INTO t SELECT g, 'while stopped' FROM generate_series(3101, 3200) g")
        .await
        .expect("while stopped");
    let mut capture = rig.spawn("");
    sql.batch_execute("INSERT INTO t SELECT g, 'restarted' FROM generate_series(3201, 3300) g")
        .await
        .expect("after the restart");
    let confirmed = primary.wait_confirmed_on(standby, "shop", slot, LIMIT).await;
    let (ok, status, err) = run_to_end(&[
        "status".into(),
        "--source-url".into(),
        standby_url,
        "--slot".into(),
        slot.into(),
    ]);
    let _ = capture.kill();
    let _ = capture.wait();
    assert!(
        confirmed,
        "capture restarted on the standby did not stream:\n{}",
        rig.logged()
    );
    assert!(ok, "status on the standby: {err}");
    assert!(status.contains("(exists)"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("snapshot") && l.contains("done (")),
        "{status}"
    );

    let primary_slots: i64 = sql.query_one(logical_slots, &[]).await.expect("primary slots").get(0);
    assert_eq!(primary_slots, 0, "the slot lives on the standby only");
    for (table, initial) in [("t", 3000), ("u", 5000)] {
        let (folded, rows) = rig.topic_and_table(table).await;
        assert_eq!(
            folded.initial_reads(),
            initial,
            "{table}: the initial snapshot ran once, on the standby:\n{}",
            rig.logged()
        );
        assert_eq!(folded.latest, rows, "{table}: the topic folds to the primary's table");
    }
    // A row an update moved to a chunk not read yet is read twice, each
    // time as it then was: more reads than rows is no error.
    let (u, _) = rig.topic_and_table("u").await;
    assert!(u.reads_of("incremental") > 0, "u was read again incrementally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_off_on_a_standby_resumes_from_the_progress_on_the_primary() {
    support::init_logs();
    let Some(rig) = Rig::start(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'initial' FROM generate_series(1, 4000) g;",
        "cut_slot",
        &[],
    )
    .await
    else {
        return;
    };
    let slot = rig.slot;
    let sql = rig.primary.client("shop").await;

    // Cut off once the slot exists on the standby and before any chunk is
    // copied: the primary records a snapshot that started.
    let pause = rig.spool.path().join("planned.pause");
    std::fs::write(&pause, b"").expect("pause file");
    let mut capture = rig.spawn(&format!("snapshot.planned=pause-while:{}", pause.display()));
    let reached = walhouse::failpoint::reached(&pause);
    let deadline = Instant::now() + LIMIT;
    while !reached.exists() {
        assert!(
            Instant::now() < deadline,
            "the snapshot was never planned:\n{}",
            rig.logged()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = capture.kill();
    let _ = capture.wait();
    std::fs::remove_file(&pause).expect("unpause");
    let phase: String = sql
        .query_one("SELECT phase FROM walhouse.snapshots WHERE slot = $1", &[&slot])
        .await
        .expect("progress on the primary")
        .get(0);
    assert_eq!(phase, "starting", "the cut-off snapshot is recorded on the primary");
    assert!(
        rig.standby.wait_for_slot("shop", slot, false, LIMIT).await,
        "the slot stays on the standby"
    );

    // Restarted: every table is read again incrementally while the
    // primary's changes stream.
    sql.batch_execute(
        "UPDATE t SET v = 'while stopped' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;",
    )
    .await
    .expect("while stopped");
    let mut capture = rig.spawn("");
    for round in 0..5 {
        sql.execute("UPDATE t SET v = 'round ' || $1::int WHERE id % 5 = $1::int", &[&round])
            .await
            .expect("update");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = rig
        .primary_says(&format!(
            "SELECT phase = 'done' FROM walhouse.snapshots WHERE slot = '{slot}'"
        ))
        .await;
    let confirmed = done && rig.primary.wait_confirmed_on(&rig.standby, "shop", slot, LIMIT).await;
    let _ = capture.kill();
    let _ = capture.wait();
    assert!(done, "the resumed snapshot did not finish:\n{}", rig.logged());
    assert!(
        confirmed,
        "the slot did not confirm the primary's changes:\n{}",
        rig.logged()
    );

    let (folded, rows) = rig.topic_and_table("t").await;
    assert_eq!(folded.initial_reads(), 0, "nothing was sent before the cut");
    assert!(folded.reads_of("incremental") > 0, "the table was read incrementally");
    assert_eq!(folded.latest, rows, "the topic folds to the primary's table");
}
