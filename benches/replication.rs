//! Replication-core benchmark: catch-up throughput of walhouse's stream and
//! decoder next to `pg_recvlogical` on the same WAL, in the same run, and
//! peak memory while streaming one huge transaction.
//!
//! Run: `cargo bench --bench replication` (env `WALHOUSE_BENCH_ROWS`,
//! default 1000000; `WALHOUSE_BENCH_ROUNDS`, default 3). Prints a table;
//! never asserts on time.

use walhouse_test_support as support;

use std::time::{Duration, Instant};

use support::postgres::PgServer;
use walhouse::postgres::catalog::RelationCache;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::postgres::pgoutput::LogicalMessage;
use walhouse::postgres::replication::{ReplicationClient, StreamOptions};
use walhouse::postgres::Lsn;

const TXN_ROWS: u64 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rows = env_u64("WALHOUSE_BENCH_ROWS", 1_000_000);
    let rounds = env_u64("WALHOUSE_BENCH_ROUNDS", 3) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(rows, rounds));
}

fn info(pg: &PgServer) -> ConnInfo {
    ConnInfo::parse(&format!(
        "postgres://postgres@127.0.0.1:{}/bench?sslmode=disable",
        pg.port
    ))
    .expect("url")
}

/// Streams from `slot` until the Commit at `stop_at` (or, when `None`,
/// until `rows` inserts and their commit); returns (elapsed, inserts,
/// that commit's LSN).
async fn walhouse_catch_up(pg: &PgServer, slot: &str, rows: u64, stop_at: Option<Lsn>) -> (Duration, u64, Lsn) {
    let started = Instant::now();
    let repl = ReplicationClient::connect(&info(pg)).await.expect("connect");
    let options = StreamOptions {
        publications: vec!["bench_pub".into()],
        ..StreamOptions::default()
    };
    let mut stream = repl.start_replication(slot, Lsn::ZERO, options).await.expect("start");
    let mut cache = RelationCache::new();
    let mut inserts = 0u64;
    loop {
        let (lsn, msg) = stream.next().await.expect("stream").expect("open");
        match msg {
            LogicalMessage::Relation(r) => {
                cache.apply_relation(r);
            }
            LogicalMessage::Insert(i) => {
                // Resolve the relation as the capture loop does.
                let rel = cache.get(i.relation_id).expect("relation");
                assert_eq!(rel.columns.len(), i.new.len());
                inserts += 1;
            }
            LogicalMessage::Commit(c) => {
                stream.acknowledge(c.end_lsn);
                let done = match stop_at {
                    Some(at) => lsn >= at,
                    None => inserts >= rows,
                };
                if done {
                    let elapsed = started.elapsed();
                    stream.stop().await.expect("stop");
                    return (elapsed, inserts, lsn);
                }
            }
            _ => {}
        }
    }
}

async fn run(rows: u64, rounds: usize) {
    println!("starting Postgres {} …", support::postgres::test_major());
    let pg = PgServer::start_with(support::postgres::PgOptions {
        extra_conf: vec!["max_wal_size = '4GB'".into(), "checkpoint_timeout = '30min'".into()],
        ..Default::default()
    });
    pg.create_db("bench");
    let sql = pg.client("bench").await;
    sql.batch_execute(
        "CREATE TABLE small (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE TABLE huge (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE PUBLICATION bench_pub FOR TABLE small, huge;",
    )
    .await
    .expect("schema");
    for r in 0..rounds {
        for kind in ["wh", "rl"] {
            sql.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{kind}_{r}', 'pgoutput')"
            ))
            .await
            .expect("slot");
        }
    }
    println!("writing {rows} rows in {TXN_ROWS}-row transactions …");
    let t = Instant::now();
    support::postgres::insert_small_rows(&sql, "small", rows, TXN_ROWS).await;
    println!("  written in {:.1?}", t.elapsed());

    // Round 0 runs walhouse first to learn the last commit's LSN, which
    // then stops pg_recvlogical at the very same message.
    let mut wh = Vec::new();
    let mut rl = Vec::new();
    let mut last_commit = None;
    for r in 0..rounds {
        let walhouse_first = r % 2 == 0;
        for step in 0..2 {
            if (step == 0) == walhouse_first {
                let (elapsed, inserts, at) = walhouse_catch_up(&pg, &format!("wh_{r}"), rows, last_commit).await;
                assert_eq!(inserts, rows, "walhouse saw every row");
                last_commit.get_or_insert(at);
                wh.push(elapsed);
            } else {
                let endpos = last_commit.expect("walhouse ran first in round 0");
                rl.push(pg.recvlogical("bench", "bench_pub", &format!("rl_{r}"), endpos));
            }
        }
    }

    // Memory while streaming one transaction of 100k rows, then of `rows`.
    let mut rss = Vec::new();
    for (i, n) in [(0, rows / 10), (1, rows)] {
        sql.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('mem_{i}', 'pgoutput');
             TRUNCATE huge;
             INSERT INTO huge SELECT g, g, g * 2, 'x' FROM generate_series(1, {n}) g;"
        ))
        .await
        .expect("huge transaction");
        support::reset_peak_rss();
        let before = support::peak_rss_mib();
        // The truncate is a transaction of its own first; count inserts only.
        let (elapsed, inserts, _) = walhouse_catch_up(&pg, &format!("mem_{i}"), n, None).await;
        assert_eq!(inserts, n);
        rss.push((n, before, support::peak_rss_mib(), elapsed));
    }

    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!(
        "catch-up of {rows} rows ({} transactions of {TXN_ROWS}), {rounds} rounds, same WAL",
        rows / TXN_ROWS
    );
    println!("| reader                         | runs (s)                  | median rows/s | ratio |");
    println!("|--------------------------------|---------------------------|---------------|-------|");
    let fmt_runs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (wh_runs, rl_runs) = (fmt_runs(&wh), fmt_runs(&rl));
    let (wh_med, rl_med) = (median(&mut wh), median(&mut rl));
    println!(
        "| pg_recvlogical (proto 1)       | {rl_runs:<25} | {:>13.0} | 1.00  |",
        rate(rl_med)
    );
    println!(
        "| walhouse stream + decode       | {wh_runs:<25} | {:>13.0} | {:.2}  |",
        rate(wh_med),
        rl_med.as_secs_f64() / wh_med.as_secs_f64()
    );
    println!();
    println!("| one transaction of | peak RSS before | peak RSS while streaming | stream time |");
    println!("|--------------------|-----------------|--------------------------|-------------|");
    for (n, before, after, elapsed) in rss {
        println!(
            "| {n:>10} rows    | {before:>11.1} MiB | {after:>20.1} MiB | {:>9.2} s |",
            elapsed.as_secs_f64()
        );
    }
}
