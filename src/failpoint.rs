//! Test hooks at the boundaries where a fault decides correctness: off
//! unless `WALHOUSE_FAILPOINTS` names them, for tests that must make a
//! rare interleaving happen every time (a batch fenced by another
//! instance, a broker that cannot say a partition's earliest offset, a
//! replication connection lost inside a transaction).
//!
//! `WALHOUSE_FAILPOINTS="sink.before_write=pause-while:/tmp/hold;sink.earliest=fail-while:/tmp/x"`
//!
//! Each action holds while its file exists, so a test turns it on and off
//! by creating and removing the file:
//! - `pause-while:<path>`: [`pause`] waits (touching `<path>.reached`
//!   first, so the test knows it got there);
//! - `fail-while:<path>`: [`fails`] says true.
//!
//! The hooks are always compiled in (the tests drive the release binaries
//! too); read once, an unset variable costs one map lookup per hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    PauseWhile(PathBuf),
    FailWhile(PathBuf),
}

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var("WALHOUSE_FAILPOINTS").unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    let mut out = HashMap::new();
    for item in spec.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item.split_once('=').and_then(|(name, action)| {
            let action = match action.split_once(':')? {
                ("pause-while", path) => Action::PauseWhile(path.into()),
                ("fail-while", path) => Action::FailWhile(path.into()),
                _ => return None,
            };
            Some((name.trim().to_owned(), action))
        });
        match parsed {
            Some((name, action)) => {
                tracing::warn!(failpoint = %name, ?action, "failpoint armed (WALHOUSE_FAILPOINTS): for tests only");
                out.insert(name, action);
            }
            None => tracing::warn!(
                item,
                "WALHOUSE_FAILPOINTS: not name=pause-while:<path> or name=fail-while:<path>; ignored"
            ),
        }
    }
    out
}

/// Waits while `name`'s pause file exists (bounded: ten minutes).
pub async fn pause(name: &str) {
    let Some(Action::PauseWhile(path)) = points().get(name) else {
        return;
    };
    if !path.exists() {
        return;
    }
    tracing::warn!(failpoint = name, "failpoint: pausing while {} exists", path.display());
    let _ = std::fs::write(reached(path), b"");
    for _ in 0..6_000 {
        if !path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(failpoint = name, "failpoint: going on");
}

/// Whether `name` is to fail now (its fail file exists).
pub fn fails(name: &str) -> bool {
    match points().get(name) {
        Some(Action::FailWhile(path)) if path.exists() => {
            tracing::warn!(failpoint = name, "failpoint: failing");
            true
        }
        _ => false,
    }
}

/// The file a pause touches when reached: `<path>.reached`.
pub fn reached(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reached");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_pauses_and_failures() {
        let p = parse("a.b=pause-while:/tmp/x; c=fail-while:/tmp/y;bad;d=explode:/z");
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("a.b"), Some(&Action::PauseWhile("/tmp/x".into())));
        assert_eq!(p.get("c"), Some(&Action::FailWhile("/tmp/y".into())));
        assert_eq!(reached(Path::new("/tmp/x")), Path::new("/tmp/x.reached"));
    }
}
