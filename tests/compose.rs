//! docker-compose.yml cannot be run here (no Docker engine), so check what
//! can be: every WALHOUSE_* variable it gives a walhouse service is a
//! setting of that binary, and together they make a configuration the
//! binary accepts (`--check`).

use std::process::Command;

/// The WALHOUSE_* variables of one service block of the compose file.
fn service_env(compose: &str, service: &str) -> Vec<(String, String)> {
    let header = format!("  {service}:");
    let mut inside = false;
    let mut out = Vec::new();
    for line in compose.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':') {
            inside = line.trim_end() == header;
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            inside = false;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.trim().split_once(':') {
            if k.starts_with("WALHOUSE_") {
                out.push((k.to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()));
            }
        }
    }
    out
}

fn check(binary: &str, env: &[(String, String)]) -> String {
    let help = Command::new(binary).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for (k, _) in env {
        assert!(help.contains(k.as_str()), "{k} is not a setting of {binary}");
    }
    let mut cmd = Command::new(binary);
    cmd.arg("--check");
    for (k, _) in std::env::vars() {
        if k.starts_with("WALHOUSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn compose() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).expect("compose file")
}

#[test]
fn the_compose_environment_is_a_valid_capture_configuration() {
    let env = service_env(&compose(), "capture");
    assert!(env.len() >= 8, "{env:?}");
    let stdout = check(env!("CARGO_BIN_EXE_walhouse-capture"), &env);
    assert!(stdout.contains("Kafka") && stdout.contains("kafka:9092"), "{stdout}");
    assert!(!stdout.contains("postgres:postgres@"), "password printed: {stdout}");
}

#[test]
fn the_compose_environment_is_a_valid_sink_configuration() {
    let env = service_env(&compose(), "sink");
    assert!(env.len() >= 6, "{env:?}");
    let stdout = check(env!("CARGO_BIN_EXE_walhouse-sink"), &env);
    assert!(stdout.contains("/data/warehouse.duckdb"), "{stdout}");
    assert!(stdout.contains("^walhouse\\\\..*"), "{stdout}");
}
