//! Debezium's PostgreSQL connector on Kafka Connect standalone, the
//! oracle and the benchmark peer of walhouse's Debezium format. Its jars
//! (Debezium 3.6.1.Final, Connect 4.1.1, as `tests/jvm/debezium.pom.xml`
//! lists) are copied by `.ci/install` into
//! `$WALHOUSE_TOOLS_DIR/debezium/libs`. It writes JSON with schemas
//! (`JsonConverter`, `schemas.enable=true`): Confluent's AvroConverter is
//! not on Maven Central, and the JSON form carries Debezium's Connect
//! schemas, from which AvroData's Avro follows.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{free_port, PgServer, PASSWORD};

fn libs() -> PathBuf {
    std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"))
        .join("debezium/libs")
}

/// A running Connect worker with one Debezium connector.
pub struct Debezium {
    child: Option<Child>,
    dir: tempfile::TempDir,
    rest_port: u16,
    /// The connector's name, slot and topic prefix.
    pub name: String,
}

impl Debezium {
    /// Starts Connect with a Debezium PostgreSQL connector on `db` of `pg`
    /// (role `walhouse_scram`), writing topics `<name>.<schema>.<table>`,
    /// with slot `<name>` and publication `<name>_pub`. `extra` are more
    /// connector settings (they win). Returns once the connector's task
    /// runs (bounded: 120 s).
    pub fn start(bootstrap: &str, pg: &PgServer, db: &str, name: &str, extra: &[(&str, &str)]) -> Debezium {
        assert!(
            libs().join("debezium-connector-postgres-3.6.1.Final.jar").exists(),
            "no Debezium jars in {} (run .ci/install)",
            libs().display()
        );
        let dir = tempfile::Builder::new()
            .prefix("walhouse-debezium-")
            .tempdir()
            .expect("connect dir");
        let rest_port = free_port();
        let worker = format!(
            "bootstrap.servers={bootstrap}\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=true\n\
             value.converter.schemas.enable=true\n\
             offset.storage.file.filename={}\n\
             offset.flush.interval.ms=500\n\
             listeners=http://127.0.0.1:{rest_port}\n",
            dir.path().join("offsets").display()
        );
        let mut settings: Vec<(String, String)> = [
            ("name", name.to_string()),
            (
                "connector.class",
                "io.debezium.connector.postgresql.PostgresConnector".into(),
            ),
            ("tasks.max", "1".into()),
            ("plugin.name", "pgoutput".into()),
            ("database.hostname", "127.0.0.1".into()),
            ("database.port", pg.port.to_string()),
            ("database.user", "walhouse_scram".into()),
            ("database.password", PASSWORD.into()),
            ("database.dbname", db.into()),
            ("topic.prefix", name.into()),
            ("slot.name", name.into()),
            ("publication.name", format!("{name}_pub")),
            ("publication.autocreate.mode", "all_tables".into()),
            // The tests' broker creates no topic by itself.
            ("topic.creation.default.replication.factor", "1".into()),
            ("topic.creation.default.partitions", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            settings.retain(|(key, _)| key != k);
            settings.push((k.to_string(), v.to_string()));
        }
        let connector: String = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(dir.path().join("worker.properties"), worker).expect("worker.properties");
        std::fs::write(dir.path().join("connector.properties"), connector).expect("connector.properties");
        let log = std::fs::File::create(dir.path().join("connect.log")).expect("connect.log");
        let child = Command::new("java")
            .args(["-Xmx512m", "-Xms64m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"])
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=info")
            .arg("-cp")
            .arg(libs().join("*"))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(dir.path().join("worker.properties"))
            .arg(dir.path().join("connector.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("java: {e} (install a JDK 17+ and run .ci/install)"));
        let mut dbz = Debezium {
            child: Some(child),
            dir,
            rest_port,
            name: name.to_string(),
        };
        dbz.wait_running(Duration::from_secs(120));
        dbz
    }

    /// Connect's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("connect.log")).unwrap_or_default()
    }

    /// The connector's task state from Connect's REST API (`RUNNING`, …).
    fn task_state(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", self.rest_port)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            sock,
            "GET /connectors/{}/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            self.name
        )
        .ok()?;
        let mut answer = String::new();
        sock.read_to_string(&mut answer).ok()?;
        let body = answer.split("\r\n\r\n").nth(1)?;
        let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        json["tasks"][0]["state"].as_str().map(str::to_owned)
    }

    fn wait_running(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("Kafka Connect exited with {status}:\n{}", self.log());
            }
            match self.task_state().as_deref() {
                Some("RUNNING") => return,
                Some("FAILED") => panic!("the Debezium task failed:\n{}", self.log()),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "Debezium did not run within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn status_mib(&self, key: &str) -> f64 {
        self.child
            .as_ref()
            .map_or(0.0, |c| crate::process_status_mib(&c.id().to_string(), key))
    }

    /// The worker's resident memory now (VmRSS), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The worker's peak resident memory (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// CPU seconds the worker used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        self.child
            .as_ref()
            .map_or(0.0, |c| crate::process_cpu_seconds(&c.id().to_string()))
    }

    /// Stops the worker as an operator would (SIGTERM: Connect flushes its
    /// offsets and the connector confirms what it committed), bounded: 60 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Debezium {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
