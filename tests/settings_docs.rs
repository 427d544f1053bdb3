//! The README's settings tables and `--check` say what the code declares:
//! every setting of either binary has its row (flag, environment
//! variable, file key, default), no row names a setting that is gone, and
//! `--check` prints every setting under its file key.

use std::collections::BTreeMap;

use clap::CommandFactory;
use walhouse::capture::config::{CaptureArgs, CaptureConfig};
use walhouse::cli::layers::file_keys;
use walhouse::sink::config::{SinkArgs, SinkConfig};

/// One row of a settings table: its cells after the flag's.
struct Row {
    env: String,
    file_key: String,
    default: String,
}

/// The rows of the first table after `heading` under `section`, by flag.
fn table(section: &str, heading: &str) -> BTreeMap<String, Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let from = readme.find(section).unwrap_or_else(|| panic!("README has {section:?}"));
    let rest = &readme[from..];
    let at = rest
        .find(heading)
        .unwrap_or_else(|| panic!("{section:?} has {heading:?}"));
    let mut rows = BTreeMap::new();
    let lines = rest[at..].lines().skip_while(|l| !l.starts_with('|'));
    for line in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let Some(flag) = cells.first().and_then(|c| flag_of(c)) else {
            continue;
        };
        let cell = |i: usize| cells.get(i).map_or_else(String::new, |c| c.to_string());
        let row = Row {
            env: cell(1),
            file_key: cell(2),
            default: cell(3),
        };
        assert!(rows.insert(flag.clone(), row).is_none(), "{flag} has two rows");
    }
    assert!(!rows.is_empty(), "no table after {heading:?} in {section:?}");
    rows
}

/// `--flag` from a cell such as "`--table-filter` (repeatable)".
fn flag_of(cell: &str) -> Option<String> {
    let start = cell.find("`--")? + 1;
    let end = cell[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))? + start;
    Some(cell[start..end].to_owned())
}

/// Checks one binary's table against its clap command.
fn compare(command: clap::Command, rows: BTreeMap<String, Row>) {
    let mut unseen: Vec<String> = rows.keys().cloned().collect();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        if matches!(long, "help" | "version") {
            continue;
        }
        let row = rows
            .get(&flag)
            .unwrap_or_else(|| panic!("{flag} has no row in the README's settings table"));
        unseen.retain(|f| f != &flag);
        match arg.get_env() {
            Some(env) => {
                let env = env.to_string_lossy();
                assert!(
                    row.env.contains(&format!("`{env}`")),
                    "{flag}: the README says {:?}, not `{env}`",
                    row.env
                );
            }
            None => assert!(!row.env.contains("WALHOUSE_"), "{flag} has no environment variable"),
        }
        let key = arg.get_id().as_str();
        if file_keys(&command).any(|k| k == key) {
            assert!(
                row.file_key.contains(key),
                "{flag}: file key {key} is not in {:?}",
                row.file_key
            );
        } else {
            assert!(
                row.file_key == "-",
                "{flag} is no file key, the README says {:?}",
                row.file_key
            );
        }
        for default in arg.get_default_values() {
            let default = default.to_string_lossy();
            assert!(
                row.default.contains(&format!("`{default}`")),
                "{flag}: default `{default}`, the README says {:?}",
                row.default
            );
        }
    }
    assert!(
        unseen.is_empty(),
        "README rows for settings that do not exist: {unseen:?}"
    );
}

/// Every file key appears as a field of `--check`'s output.
fn all_keys_checked(command: &clap::Command, shown: &str) {
    for key in file_keys(command) {
        assert!(
            shown.contains(&format!(" {key}: ")),
            "--check does not show {key}:\n{shown}"
        );
    }
}

#[test]
fn the_capture_settings_table_is_what_capture_declares() {
    compare(CaptureArgs::command(), table("## walhouse-capture", "### Settings"));
    let args =
        CaptureArgs::parse_layered(["walhouse-capture", "--source-url", "postgres://u:hunter2@h/db"]).expect("flags");
    let shown = format!("{:#?}", CaptureConfig::resolve(args.settings).expect("valid"));
    assert!(!shown.contains("hunter2"), "{shown}");
    all_keys_checked(&CaptureArgs::command(), &shown);
}

#[test]
fn the_sink_settings_table_is_what_the_sink_declares() {
    compare(SinkArgs::command(), table("## walhouse-sink", "### Settings"));
    let args = SinkArgs::parse_layered([
        "walhouse-sink",
        "--warehouse",
        "postgres://u:hunter2@h/wh",
        "--brokers",
        "b:9092",
        "--schema-registry-url",
        "http://r:8081",
    ])
    .expect("flags");
    let shown = format!("{:#?}", SinkConfig::resolve(args.settings, true).expect("valid"));
    assert!(!shown.contains("hunter2"), "{shown}");
    all_keys_checked(&SinkArgs::command(), &shown);
}
