//! How fast the warehouse answers as its history grows: the seed's three
//! questions and a `count(*)` of each latest-state view, on DuckDB and on a
//! Postgres warehouse whose raw tables hold 1M and then 10M changes, next
//! to the same questions on the source (which holds only the current rows).
//!
//! The seed's backend is generated, captured (snapshot, then streaming),
//! and grown by inserts and updates of `transaction` and
//! `card_transactions` until the raw tables hold each scale's changes (a
//! key has about three versions). Both sinks run while it grows. At each
//! scale the answers are checked equal on all three, then each query is
//! timed (the median of `WALHOUSE_BENCH_ROUNDS` runs, default 3; one run
//! once a query takes over 10 s).
//!
//! Run: `cargo bench --bench views` (`WALHOUSE_BENCH_SCALES`, default
//! `1000000,10000000`).

use walhouse_test_support as support;

use std::time::{Duration, Instant};

use support::command::{CaptureCommand, SinkCommand};
use support::pipeline::{ask, BACKEND_SCHEMA, GENERATE, QUESTIONS, SEED_TABLES};
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::Warehouse;

const LIMIT: Duration = Duration::from_secs(1800);

/// Grows the source's history by about `changes` changes, in statements
/// of their own; returns how many rows they changed.
async fn grow(sql: &tokio_postgres::Client, changes: u64) -> u64 {
    let tx: i64 = sql
        .query_one("SELECT max(id) FROM public.\"transaction\"", &[])
        .await
        .expect("max")
        .get(0);
    let ct: i64 = sql
        .query_one("SELECT max(id) FROM public.card_transactions", &[])
        .await
        .expect("max")
        .get(0);
    let (new_tx, new_ct) = (changes as i64 / 4, changes as i64 / 8);
    let statements = [
        // New transactions, as the generator makes them.
        format!(
            "INSERT INTO public.\"transaction\" (id, status, bank_account_id, subject_type, subject_id, amount, currency, settled_at, tags) \
             SELECT g, g % 3, 1 + g % 60, CASE WHEN g % 2 = 0 THEN 'Transfer' ELSE 'Card' END, \
             CASE WHEN g % 2 = 0 THEN 1 + (g / 2) % 400 ELSE NULL END, round((random() * 2000 - 1000)::numeric, 4), 'EUR', \
             timestamptz '2024-06-01 00:00:00+00' + g * interval '7 minutes', ARRAY['gen', 'batch-' || (g % 10)] \
             FROM generate_series({}, {}) g",
            tx + 1,
            tx + new_tx
        ),
        // Two status changes each: three versions of every new transaction.
        format!("UPDATE public.\"transaction\" SET status = (status + 1) % 3 WHERE id > {tx}"),
        format!("UPDATE public.\"transaction\" SET status = (status + 1) % 3, settled_at = now() WHERE id > {tx}"),
        // Card transactions of the new 'Card' (odd) transactions, then one change each.
        format!(
            "INSERT INTO public.card_transactions (id, transaction_id, status, amount, merchant) \
             SELECT g, {tx} + 1 + 2 * (g % greatest({new_tx} / 2, 1)), g % 3, round((random() * 300)::numeric, 4), \
             'Merchant ' || (g % 50) FROM generate_series({}, {}) g",
            ct + 1,
            ct + new_ct
        ),
        format!("UPDATE public.card_transactions SET status = (status + 1) % 3 WHERE id > {ct}"),
    ];
    let mut changed = 0;
    for s in statements {
        changed += sql.execute(s.as_str(), &[]).await.expect("grows");
    }
    changed
}

/// A query on a Postgres warehouse is cancelled after this long (and
/// reported as taking at least as long).
const STATEMENT_TIMEOUT_S: u64 = 120;

/// The median time of `query` on `w` over `rounds` (one when it is slow);
/// infinity if it was cancelled at [`STATEMENT_TIMEOUT_S`].
async fn time<W: Warehouse>(w: &mut W, query: &str, rounds: u64) -> f64 {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        if let Err(e) = w.query_text(query).await {
            assert!(e.to_string().contains("statement timeout"), "{query}: {e}");
            return f64::INFINITY;
        }
        let t = started.elapsed().as_secs_f64();
        times.push(t);
        if t > 10.0 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Each question's and each view count's median time on `w`.
async fn timings<W: Warehouse>(w: &mut W, rounds: u64, views: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for (_, pg, duck) in QUESTIONS {
        let text = match w.dialect() {
            walhouse::warehouse::Dialect::Postgres => pg,
            walhouse::warehouse::Dialect::DuckDb => duck,
            walhouse::warehouse::Dialect::Iceberg => panic!("this bench times the SQL targets"),
        };
        out.push(time(w, text, rounds).await);
    }
    if views {
        for v in SEED_TABLES {
            out.push(time(w, &format!("SELECT count(*) FROM public.\"{v}\""), rounds).await);
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: u64 = std::env::var("WALHOUSE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scales: Vec<u64> = std::env::var("WALHOUSE_BENCH_SCALES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "starting Postgres {}, Apache Kafka {} and the dev registry …",
        support::postgres::test_major(),
        support::kafka::kafka_version()
    );
    let pg = support::postgres::PgServer::start();
    pg.create_db("backend");
    let warehouse_db = pg.create_db("warehouse");
    let broker = support::kafka::Broker::start();
    let registry = support::registry::TestRegistry::start().await;
    let sql = pg.client("backend").await;
    sql.batch_execute(BACKEND_SCHEMA).await.expect("schema");
    sql.batch_execute(GENERATE).await.expect("data");
    let base: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM bank_accounts) + \
             (SELECT count(*) FROM beneficiaries) + (SELECT count(*) FROM transfers) + \
             (SELECT count(*) FROM \"transaction\") + (SELECT count(*) FROM card_transactions)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    let source_url = pg.url("walhouse_scram", "backend");
    let capture = CaptureCommand::from(&source_url)
        .into_kafka(&broker.bootstrap(), &registry.url, "views")
        .start();
    let dir = tempfile::tempdir().expect("tempdir");
    let duck_path = dir.path().join("views.duckdb");
    let duck_url = format!("duckdb:{}", duck_path.display());
    let pg_url = pg.url("walhouse_scram", &warehouse_db);

    let mut changes = base as u64;
    // Rows each sink group has stored in earlier runs (a run's metrics
    // count its own).
    let mut stored = [0u64; 2];
    let mut rows = Vec::new();
    for scale in scales {
        if scale > changes {
            println!("growing the history to {scale} changes …");
            changes += grow(&sql, scale - changes).await;
        }
        // Both sinks, each until its raw tables hold every change; stopped
        // before the queries (DuckDB's file has one writer).
        for (i, (url, group)) in [(&duck_url, "views-duckdb"), (&pg_url, "views-postgres")]
            .into_iter()
            .enumerate()
        {
            let sink = SinkCommand::into(url, &broker.bootstrap(), &registry.url)
                .topics_under("views", group)
                .with("--companies-topic", "")
                .start()
                .await;
            let deadline = Instant::now() + LIMIT;
            while stored[i] + sink.metrics.rows() < changes {
                let so_far = stored[i] + sink.metrics.rows();
                assert!(Instant::now() < deadline, "{group} stored {so_far} of {changes}");
                assert!(!sink.has_ended(), "{group} stopped");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            stored[i] += sink.metrics.rows();
            sink.stop().await;
        }
        let mut duck = DuckDbWarehouse::open(&duck_path).expect("duckdb");
        let mut wh = PostgresWarehouse::connect(&ConnInfo::parse(&pg_url).expect("url"))
            .await
            .expect("warehouse");
        wh.query_text(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'"))
            .await
            .expect("timeout");
        let mut source = PostgresWarehouse::connect(&ConnInfo::parse(&source_url).expect("url"))
            .await
            .expect("source");
        // Statistics as autovacuum would gather them after such a load
        // (it had not run yet).
        wh.query_text("ANALYZE").await.expect("analyze");
        // Checked with nested loops off: with them a question may not end
        // in time (see below).
        wh.query_text("SET enable_nestloop = off").await.expect("set");
        let (on_source, on_duck, on_pg) = (ask(&mut source).await, ask(&mut duck).await, ask(&mut wh).await);
        wh.query_text("SET enable_nestloop = on").await.expect("set");
        assert_eq!(on_duck, on_source, "DuckDB answers as the source");
        assert_eq!(on_pg, on_source, "the Postgres warehouse answers as the source");
        let raw: Vec<Vec<Option<String>>> = duck
            .query_text("SELECT count(*) FROM raw_public.\"transaction\"")
            .await
            .expect("raw count");
        println!(
            "{changes} changes stored in each warehouse ({raw:?} of them in raw_public.transaction); answers match"
        );
        if std::env::var("WALHOUSE_BENCH_EXPLAIN").is_ok() {
            let plan = wh
                .query_text(&format!("EXPLAIN {}", QUESTIONS[2].1))
                .await
                .expect("explain");
            for line in plan {
                println!("{}", line[0].clone().unwrap_or_default());
            }
        }
        rows.push((
            changes,
            "source (current rows only)",
            timings(&mut source, rounds, false).await,
        ));
        rows.push((changes, "DuckDB warehouse", timings(&mut duck, rounds, true).await));
        rows.push((changes, "Postgres warehouse", timings(&mut wh, rounds, true).await));
        // The planner misjudges how many rows a latest-state view yields,
        // and joins them by nested loops; without those:
        wh.query_text("SET enable_nestloop = off").await.expect("set");
        rows.push((
            changes,
            "Postgres warehouse, enable_nestloop off",
            timings(&mut wh, rounds, false).await,
        ));
    }
    capture.stop().await;
    println!();
    println!("seconds, median of {rounds} runs (one run once a query took over 10 s)");
    let names: Vec<String> = QUESTIONS
        .iter()
        .map(|(n, _, _)| n.split('_').next().unwrap_or(n).to_string())
        .chain(SEED_TABLES.iter().map(|v| format!("count {v}")))
        .collect();
    println!("| changes | where | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    for (changes, where_, times) in rows {
        let cells: Vec<String> = (0..names.len())
            .map(|i| match times.get(i) {
                None => String::new(),
                Some(t) if t.is_infinite() => format!("> {STATEMENT_TIMEOUT_S}"),
                Some(t) => format!("{t:.3}"),
            })
            .collect();
        println!("| {changes} | {where_} | {} |", cells.join(" | "));
    }
}
