//! docker-compose.yml cannot be run here (no Docker engine), so check what
//! can be: every WALHOUSE_* variable it gives capture is a setting the
//! binary accepts, with a value it accepts.

use std::process::Command;

#[test]
fn the_compose_environment_is_a_valid_capture_configuration() {
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).expect("compose file");
    let env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            k.starts_with("WALHOUSE_")
                .then(|| (k.to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    assert!(env.len() >= 8, "{env:?}");
    let help = Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for (k, _) in &env {
        assert!(help.contains(k.as_str()), "{k} is not a walhouse-capture setting");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walhouse-capture"));
    cmd.arg("--check");
    for (k, _) in std::env::vars() {
        if k.starts_with("WALHOUSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Kafka") && stdout.contains("kafka:9092"), "{stdout}");
    assert!(!stdout.contains("postgres:postgres@"), "password printed: {stdout}");
}
