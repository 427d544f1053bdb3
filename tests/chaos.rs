//! The chaos test of the whole pipeline (see `support::chaos`): a short
//! run in the test command, a long one on demand:
//! `cargo test --test chaos -- --seconds 600 --seed 42`.
//! (Its own `main`: the test harness would refuse those flags.)

use walhouse_test_support as support;

/// Seconds of kills in the short form the test command runs.
const SHORT_SECONDS: u64 = 40;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).and_then(|v| v.parse().ok())
    };
    let seconds = value("--seconds").unwrap_or(SHORT_SECONDS);
    let seed = value("--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // `cargo test -- --list` and filters reach every test binary.
    if args.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return;
    }
    support::init_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let bins = support::chaos::Binaries {
        capture: env!("CARGO_BIN_EXE_walhouse-capture").into(),
        sink: env!("CARGO_BIN_EXE_walhouse-sink").into(),
    };
    runtime.block_on(support::chaos::run(&bins, seconds, seed));
    println!("test chaos ... ok");
}
