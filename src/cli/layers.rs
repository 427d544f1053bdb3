//! One parse for every layer of settings. clap reads the flags and the
//! environment; the `--config` TOML file's keys are then given to clap as
//! flags, for the settings neither of those set, so every value goes
//! through the same parser whichever layer it came from. A setting is
//! declared once, as a field of a clap struct: its name is the file key,
//! `--name` the flag, and its `env` and `default_value` stay with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches};

use super::ConfigError;

/// The flag that names the file.
const CONFIG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A flag or environment value clap refused, or `--help`/`--version`:
    /// the binary lets clap print it and exit.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ParseError {
    /// Prints the error as clap would (help and version on stdout, exit 0)
    /// or as `program: cause` with exit code 2, and exits.
    pub fn exit(self, program: &str) -> ! {
        match self {
            ParseError::Clap(e) => e.exit(),
            ParseError::Config(e) => {
                eprintln!("{program}: {e}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `argv` into `P`: flags beat the environment, which beats the
/// `--config` file, which beats the defaults. The keys in `merged` are
/// tables whose entries the file and the flags both give, flags last (so
/// a flag wins for its own key only); any other key of the file is unused
/// when a flag or the environment set that setting.
pub fn parse<P>(argv: impl IntoIterator<Item = impl Into<OsString>>, merged: &[&str]) -> Result<P, ParseError>
where
    P: CommandFactory + FromArgMatches,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = P::command();
    // The first pass only learns the file's path and which settings the
    // user gave; errors are the second pass's to report, with the file's
    // values in place (a required setting may come from the file).
    let first = command.clone().ignore_errors(true).try_get_matches_from(&argv)?;
    let from_file = match first.get_one::<PathBuf>(CONFIG) {
        Some(path) => file_flags(&command, &first, path, merged)?,
        None => Vec::new(),
    };
    let mut all = Vec::with_capacity(argv.len() + from_file.len());
    let mut given = argv.into_iter();
    all.extend(given.next());
    // Before the user's flags: top-level flags precede any subcommand, and
    // a merged table's entries come before the flags that override them.
    all.extend(from_file);
    all.extend(given);
    let matches = command.try_get_matches_from(all)?;
    Ok(P::from_arg_matches(&matches)?)
}

/// The file's settings as `--name=value` flags.
fn file_flags(
    command: &clap::Command,
    given: &ArgMatches,
    path: &Path,
    merged: &[&str],
) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    let invalid = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        let arg = file_setting(command, &key).ok_or_else(|| {
            invalid(format!(
                "unknown key {key:?}; the keys are {}",
                file_keys(command).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let set_by_user = matches!(
            given.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_by_user && !merged.contains(&key.as_str()) {
            continue;
        }
        let many = arg.get_action().takes_values() && (arg.get_num_args().is_some_and(|n| n.max_values() > 1))
            || matches!(arg.get_action(), clap::ArgAction::Append);
        let values = file_values(&key, value, many).map_err(invalid)?;
        let long = arg.get_long().unwrap_or(arg.get_id().as_str());
        // The flag's own parser, alone, so that an error names the key.
        let mut alone = clap::Command::new("file").no_binary_name(true).arg(arg.clone());
        for v in values {
            let flag = OsString::from(format!("--{long}={v}"));
            if let Err(e) = alone.try_get_matches_from_mut([&flag]) {
                return Err(invalid(format!("{key}: {}", clap_message(&e))));
            }
            flags.push(flag);
        }
    }
    Ok(flags)
}

/// The setting a file key names: any flag that takes a value, except the
/// one naming the file.
fn file_setting<'c>(command: &'c clap::Command, key: &str) -> Option<&'c Arg> {
    command
        .get_arguments()
        .find(|a| a.get_id() == key && is_file_setting(a))
}

fn is_file_setting(arg: &Arg) -> bool {
    arg.get_id() != CONFIG && arg.get_long().is_some() && arg.get_action().takes_values()
}

/// Every key a file may hold.
pub fn file_keys(command: &clap::Command) -> impl Iterator<Item = &str> {
    command
        .get_arguments()
        .filter(|a| is_file_setting(a))
        .map(|a| a.get_id().as_str())
}

/// A TOML value as the flag values it stands for: an array is the flag
/// repeated, a table (`"schema.table" = …`, `[kafka]`) one `key=value`
/// per entry, lists inside it joined with commas.
fn file_values(key: &str, value: toml::Value, many: bool) -> Result<Vec<String>, String> {
    let scalar = |v: toml::Value| match v {
        toml::Value::String(s) => Ok(s),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err(format!("{key}: lists in lists are not a setting"))
                }
                other => Ok(other.to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        toml::Value::Table(_) => Err(format!("{key}: a table here is not a setting")),
        other => Ok(other.to_string()),
    };
    let values = match value {
        toml::Value::Array(items) => items.into_iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        toml::Value::Table(entries) => entries
            .into_iter()
            .map(|(k, v)| scalar(v).map(|v| format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?,
        other => vec![scalar(other)?],
    };
    if values.len() != 1 && !many {
        return Err(format!("{key} takes one value, not a list or a table"));
    }
    Ok(values)
}

/// clap's message without its `error: ` prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        check: bool,
        #[arg(long, env = "WALHOUSE_LAYERS_TEST_SLOT", default_value = "walhouse")]
        slot: String,
        #[arg(long, default_value_t = 10)]
        attempts: u32,
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        #[arg(long = "option")]
        kafka: Vec<String>,
        #[arg(long, allow_negative_numbers = true, default_value_t = -1)]
        replication: i32,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn demo(text: &str, flags: &[&str]) -> Result<Demo, ParseError> {
        let f = file(text);
        let mut argv = vec!["demo", "--config", f.path().to_str().expect("utf8")];
        argv.extend_from_slice(flags);
        parse::<Demo>(argv, &["kafka"])
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let d = demo(
            "slot = \"from_file\"\nattempts = 3\ntables = [\"a\", \"b\"]\nreplication = -2\n",
            &["--attempts", "4"],
        )
        .expect("valid");
        assert_eq!((d.slot.as_str(), d.attempts, d.replication), ("from_file", 4, -2));
        assert_eq!(d.tables, ["a", "b"]);
        let d = demo("", &[]).expect("empty file");
        assert_eq!((d.slot.as_str(), d.attempts, d.replication), ("walhouse", 10, -1));
    }

    #[test]
    fn a_merged_table_takes_entries_from_both_flags_last() {
        let d = demo(
            "[kafka]\n\"linger.ms\" = 20\n\"acks\" = \"all\"\n",
            &["--option", "linger.ms=5"],
        )
        .expect("valid");
        assert_eq!(d.kafka, ["acks=all", "linger.ms=20", "linger.ms=5"]);
    }

    #[test]
    fn the_file_is_checked_by_the_flags_parsers_and_names_the_key() {
        let e = demo("attempts = \"many\"\n", &[])
            .expect_err("not a number")
            .to_string();
        assert!(e.contains("attempts") && e.contains("many"), "{e}");
        let e = demo("atempts = 3\n", &[]).expect_err("unknown").to_string();
        assert!(e.contains("\"atempts\"") && e.contains("attempts"), "{e}");
        let e = demo("slot = [\"a\", \"b\"]\n", &[]).expect_err("one value").to_string();
        assert!(e.contains("slot takes one value"), "{e}");
        let e = demo("check = true\n", &[]).expect_err("not a setting").to_string();
        assert!(e.contains("\"check\""), "{e}");
        // A flag's own error is still clap's, with the file in place.
        assert!(matches!(demo("", &["--attempts", "x"]), Err(ParseError::Clap(_))));
    }
}
