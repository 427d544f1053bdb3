//! `walhouse-capture --output stdout` end to end: the real binary against a
//! real server, read back line by line.

use walhouse_test_support as support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::postgres::PgServer;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

struct Capture {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
    // Hermetic: no WALHOUSE_* from the test's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("WALHOUSE_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}

impl Capture {
    fn spawn(mut cmd: Command) -> Capture {
        let mut child = cmd.spawn().expect("walhouse-capture starts");
        let stdout = child.stdout.take().expect("piped stdout");
        Capture {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn read(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out after {} of {n} lines: {out:#?}", out.len()))
                .expect("read stdout")
                .expect("stdout open");
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
        }
        out
    }

    /// SIGTERM, then the exit code (bounded).
    async fn terminate(mut self) -> i32 {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait");
        status.code().expect("exit code, not a signal")
    }
}

async fn lsn_ge(pg: &PgServer, db: &str, a: &str, b: &str) -> bool {
    pg.client(db)
        .await
        .query_one("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", &[&a, &b])
        .await
        .expect("compare")
        .get(0)
}

#[tokio::test]
async fn streams_json_lines_stops_cleanly_and_resumes_without_repeats() {
    let pg = PgServer::start();
    let db = pg.create_db("shop");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE organizations (id uuid PRIMARY KEY, name text);
         CREATE TABLE \"Odd Table\" (id int PRIMARY KEY, \"Mixed Col\" text);
         CREATE TABLE ignored (id int PRIMARY KEY);",
    )
    .await
    .expect("schema");

    // Source URL from the environment, slot from a config file, tables
    // from a flag: all three spellings in one run.
    let config = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(config.path(), "slot = \"cli_slot\"\npublication = \"cli_pub\"\n").expect("config");
    let mut cmd = command();
    cmd.env("WALHOUSE_SOURCE_URL", pg.url("walhouse_scram", &db))
        .arg("--config")
        .arg(config.path())
        .args(["--tables", "public.organizations,\"Odd Table\"", "--output", "stdout"]);
    let mut cap = Capture::spawn(cmd);

    // The slot exists once capture is streaming; wait for it.
    assert!(
        pg.wait_for_slot(&db, "cli_slot", true, Duration::from_secs(10)).await,
        "capture did not start streaming"
    );
    sql.batch_execute(
        "INSERT INTO organizations VALUES ('a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a', 'Acme');
         INSERT INTO ignored VALUES (1);",
    )
    .await
    .expect("insert");
    sql.batch_execute("INSERT INTO \"Odd Table\" VALUES (1, 'x'); UPDATE organizations SET name = 'Acme Tools'")
        .await
        .expect("tx2");
    sql.batch_execute("DELETE FROM \"Odd Table\"").await.expect("delete");
    let lines = cap.read(4).await;
    assert_eq!(lines[0]["op"], "insert");
    assert_eq!(lines[0]["schema"], "public");
    assert_eq!(lines[0]["table"], "organizations");
    assert_eq!(lines[0]["key"]["id"], "a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a");
    assert_eq!(lines[0]["after"]["name"], "Acme");
    assert_eq!(lines[0]["tx_ordinal"], 1);
    assert_eq!(lines[1]["table"], "Odd Table");
    assert_eq!(lines[1]["after"]["Mixed Col"], "x");
    assert_eq!(lines[1]["tx_ordinal"], 1);
    assert_eq!(lines[2]["op"], "update");
    assert_eq!(lines[2]["after"]["name"], "Acme Tools");
    assert_eq!(lines[2]["tx_ordinal"], 2);
    assert_eq!(lines[1]["xid"], lines[2]["xid"]);
    assert_eq!(lines[3]["op"], "delete");
    assert_eq!(lines[3]["key"]["id"], "1");
    assert!(lines[3]["after"].is_null());
    for l in &lines {
        assert!(l["commit_ts_ms"].as_i64().is_some_and(|t| t > 1_600_000_000_000), "{l}");
        assert!(l["lsn"].as_str().is_some_and(|s| s.contains('/')), "{l}");
    }

    assert_eq!(cap.terminate().await, 0, "clean stop exits 0");
    let confirmed = pg.confirmed_flush_when_inactive(&db, "cli_slot").await;
    let last_commit = lines[3]["commit_lsn"].as_str().expect("commit_lsn");
    assert!(
        lsn_ge(&pg, &db, &confirmed, last_commit).await,
        "{confirmed} < {last_commit}"
    );

    // Restart: only the new change arrives, nothing acknowledged repeats.
    sql.batch_execute("INSERT INTO organizations VALUES ('3b0c7f52-9d7e-4a51-8f0e-2c1d6a4b9e01', 'Globex')")
        .await
        .expect("insert while stopped");
    let mut cmd = command();
    cmd.args(["--source-url", &pg.url("walhouse_scram", &db)]).args([
        "--slot",
        "cli_slot",
        "--publication",
        "cli_pub",
        "--output",
        "stdout",
    ]);
    let mut cap = Capture::spawn(cmd);
    let lines = cap.read(1).await;
    assert_eq!(lines[0]["after"]["name"], "Globex");
    sql.batch_execute("INSERT INTO organizations VALUES ('5f1c2a9e-0000-4000-8000-000000000001', 'Initech')")
        .await
        .expect("insert");
    let lines = cap.read(1).await;
    assert_eq!(lines[0]["after"]["name"], "Initech", "no repeat of earlier lines");
    assert_eq!(cap.terminate().await, 0);

    // `status` reads the slot and publication back.
    let out = command()
        .args(["status", "--json", "--source-url", &pg.url("walhouse_scram", &db)])
        .args(["--slot", "cli_slot", "--publication", "cli_pub"])
        .output()
        .await
        .expect("status runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(report["slot_exists"], true);
    assert_eq!(report["snapshot"], "done");
    assert!(report["snapshot_chunks"].as_u64().is_some_and(|n| n >= 2), "{report}");
    assert_eq!(report["snapshot_chunks_done"], report["snapshot_chunks"]);
    assert!(report["confirmed_flush_lsn"].as_str().is_some_and(|l| l.contains('/')));
    assert!(report["lag_bytes"].as_i64().is_some_and(|b| b >= 0));
    let tables: Vec<&str> = report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tables, ["public.Odd Table", "public.organizations"]);
    // Postgres 17+ reports whether the slot fails over; 15 and 16 do not.
    let expected_failover = if report["failover"].is_null() { "-" } else { "false" };

    // The text form says the same, one fact a line.
    let out = command()
        .args(["status", "--source-url", &pg.url("walhouse_scram", &db)])
        .args(["--slot", "cli_slot", "--publication", "cli_pub"])
        .output()
        .await
        .expect("status runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label).map(str::trim))
            .unwrap_or_else(|| panic!("no {label:?} line in {text}"))
            .to_owned()
    };
    assert_eq!(value("slot "), "cli_slot (exists)");
    assert_eq!(value("failover "), expected_failover);
    assert!(value("snapshot ").starts_with("done ("), "{text}");
    assert!(text.contains("  public.organizations\n"), "{text}");
}

#[tokio::test]
async fn errors_exit_non_zero_with_a_one_line_cause() {
    let out = command()
        .args(["--source-url", "mysql://nope"])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postgres://"), "{err}");

    let pg = PgServer::start_with(support::postgres::PgOptions {
        wal_level: "replica",
        ..Default::default()
    });
    let out = command()
        .args(["--source-url", &pg.url("walhouse_scram", "postgres")])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("walhouse-capture: wal_level is \"replica\""), "{err}");
}

/// `--check` prints the configuration, but no secret of it: the source's
/// and the primary's passwords, the registry password, librdkafka's secret
/// keys. A registry URL that carries credentials is refused without
/// echoing them.
#[tokio::test]
async fn check_never_prints_a_secret() {
    let common = [
        "--brokers",
        "127.0.0.1:9",
        "--schema-registry-url",
        "http://127.0.0.1:9",
        "--schema-registry-user",
        "u",
        "--schema-registry-password",
        "hunter2",
        "--kafka-option",
        "sasl.password=hunter3",
        "--kafka-option",
        "sasl.oauthbearer.client.secret=hunter4",
        "--check",
    ];
    let mut capture = command();
    capture
        .args([
            "--source-url",
            "postgres://u:hunter1@127.0.0.1:9/d",
            "--primary-url",
            "postgres://u:hunter6@127.0.0.1:9/d",
            "--output",
            "kafka",
        ])
        .args(common);
    let mut sink = Command::new(env!("CARGO_BIN_EXE_walhouse-sink"));
    sink.args(["--warehouse", "postgres://u:hunter1@127.0.0.1:9/w"])
        .args(common)
        .stdin(Stdio::null());
    for mut cmd in [capture, sink] {
        let out = cmd.stderr(Stdio::piped()).output().await.expect("runs");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{shown}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter"), "{shown}");
    }
    let out = command()
        .args([
            "--source-url",
            "postgres://u@127.0.0.1:9/d",
            "--output",
            "kafka",
            "--brokers",
            "127.0.0.1:9",
            "--schema-registry-url",
            "http://u:hunter5@127.0.0.1:9",
            "--check",
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("credentials") && err.contains("--schema-registry-password"),
        "{err}"
    );
    assert!(!err.contains("hunter5"), "{err}");
}

/// The binaries layer their settings as the README says: a flag beats
/// the environment, which beats the `--config` file, which beats the
/// defaults; a bad file value stops at start (exit 2) naming its key.
#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("walhouse.toml");
    std::fs::write(
        &file,
        "source_url = \"postgres://u@127.0.0.1:9/d\"\nslot = \"from_file\"\npublication = \"from_file\"\n\
         state_schema = \"from_file\"\nsnapshot_chunk_pages = 7\n",
    )
    .expect("write");
    let out = command()
        .args([
            "--config",
            file.to_str().expect("utf8"),
            "--publication",
            "from_flag",
            "--check",
        ])
        .env("WALHOUSE_SLOT", "from_env")
        .env("WALHOUSE_PUBLICATION", "from_env")
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "slot: \"from_env\"",
        "publication: \"from_flag\"",
        "state_schema: \"from_file\"",
        "snapshot_chunk_pages: 7,",
        "max_reconnect_attempts: 10,",
    ] {
        assert!(shown.contains(expected), "{expected} not in {shown}");
    }
    std::fs::write(
        &file,
        "source_url = \"postgres://u@127.0.0.1:9/d\"\nsnapshot_connections = 100\n",
    )
    .expect("write");
    let out = command()
        .args(["--config", file.to_str().expect("utf8"), "--check"])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("snapshot_connections") && err.contains("100"), "{err}");
}
