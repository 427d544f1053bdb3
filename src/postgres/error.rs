//! What can go wrong talking to the source, classified once.
//!
//! Every error a user can fix names the fix. [`SourceError::is_transient`]
//! is the single place that decides whether the capture loop reconnects
//! (with backoff) or stops.

use std::fmt;
use std::io;

use super::lsn::Lsn;
use super::pgoutput::DecodeError;
use super::tls::TlsError;

/// An ErrorResponse from the server, with the fields operators need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55006`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl ServerError {
    /// Parses the fields of an ErrorResponse or NoticeResponse body.
    pub fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        for field in body.split(|&b| b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                // 'V' is the untranslated severity; prefer it over 'S'.
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        e
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to the source at {address}: {source}. Fix: check host and port in --source-url and that Postgres listens there (listen_addresses, firewall)")]
    Connect { address: String, source: io::Error },
    #[error("no host of --source-url is a server of the kind asked for (target_session_attrs={wanted}): {tried}. Fix: check the hosts; during a failover, wait until the standby is promoted (walhouse retries)")]
    NoHost { wanted: &'static str, tried: String },
    #[error("the source holds back this slot's changes until the standbys named in synchronized_standby_slots confirm them, and cannot: {message}. Fix: {hint}; or, if no standby is to take over, remove this slot's failover (--slot-failover false on a new slot)")]
    StandbySlotsBroken { message: String, hint: String },
    #[error("connection to the source lost: {0}. walhouse reconnects and resumes from the last acknowledged LSN")]
    ConnectionLost(io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("authentication as {user:?} failed: {message}. Fix: check user and password in --source-url and the matching pg_hba.conf line")]
    Auth { user: String, message: String },
    #[error("the server asked for authentication method {0}, which walhouse does not support (supported: trust, password, md5, scram-sha-256)")]
    UnsupportedAuth(String),
    #[error("wal_level is {actual:?} but logical decoding needs 'logical'. Fix: ALTER SYSTEM SET wal_level = logical; then restart Postgres")]
    WalLevelNotLogical { actual: String },
    #[error("role {user:?} lacks the REPLICATION attribute. Fix: ALTER ROLE \"{user}\" WITH REPLICATION; (or use a superuser), and allow it in pg_hba.conf for database 'replication' connections")]
    MissingReplicationPrivilege { user: String },
    #[error("replication slot {slot:?} is in use by another process{pid}. Fix: stop the other consumer (SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}') or use another --slot", pid = .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    SlotActive { slot: String, pid: Option<i32> },
    #[error("publication {publication:?} does not exist in database {dbname:?}. Fix: let walhouse create it (a role that owns the tables or is superuser), or CREATE PUBLICATION \"{publication}\" FOR TABLE …")]
    PublicationMissing { publication: String, dbname: String },
    #[error("replication slot {slot:?} was invalidated{}, so changes were lost for it. Fix: drop it (SELECT pg_drop_replication_slot('{slot}')) and start again with a new slot and a fresh snapshot; {}", invalidation_cause(.reason.as_deref()), invalidation_prevention(.reason.as_deref()))]
    SlotInvalidated {
        slot: String,
        /// `pg_replication_slots.invalidation_reason` (Postgres 17+).
        reason: Option<String>,
    },
    #[error("replication slot {slot:?} {problem}. Fix: use another --slot, or drop this one if it is not in use (SELECT pg_drop_replication_slot('{slot}'))")]
    SlotUnusable { slot: String, problem: String },
    #[error("table {table} does not exist in the source database. Fix: check --tables (schema.table, names are case-sensitive)")]
    TableMissing { table: String },
    #[error("--slot-failover needs Postgres 17 or later (the server is {version}). Fix: leave it off; on Postgres 15/16 a promoted standby has no logical slots, so plan a new slot and snapshot after a failover")]
    FailoverUnsupported { version: u32 },
    #[error("cannot keep snapshot progress in schema {schema:?} of the source: {}. Fix: let the capture role create it (GRANT CREATE ON DATABASE … TO \"{user}\"), or create it for that role (CREATE SCHEMA \"{schema}\" AUTHORIZATION \"{user}\"), or choose another --state-schema; with --snapshot-mode never no progress is kept", sql_message(.source))]
    StateStore {
        schema: String,
        user: String,
        source: tokio_postgres::Error,
    },
    #[error("the source server answered {query} in an unexpected form (column {column}: {source}). Fix: none on your side; report it with the output of SELECT version(): this Postgres version changed a catalog that walhouse reads")]
    UnexpectedAnswer {
        query: &'static str,
        column: usize,
        source: tokio_postgres::Error,
    },
    #[error("the source server answered: {0}")]
    Server(ServerError),
    #[error("the source database answered: {}", sql_message(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
    #[error("cannot decode the pgoutput message at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
}

/// What an invalidation reason means, for the message.
fn invalidation_cause(reason: Option<&str>) -> String {
    match reason {
        Some("wal_removed") | None => " (the WAL it needed was removed)".into(),
        Some("rows_removed") => " (rows it still needed were vacuumed away: invalidation_reason = rows_removed)".into(),
        Some("wal_level_insufficient") => {
            " (the primary's wal_level dropped below logical: invalidation_reason = wal_level_insufficient)".into()
        }
        Some("idle_timeout") => {
            " (nobody streamed from it for longer than idle_replication_slot_timeout: invalidation_reason = idle_timeout)"
                .into()
        }
        Some(other) => format!(" (invalidation_reason = {other})"),
    }
}

/// How to keep an invalidation from recurring, by its reason.
fn invalidation_prevention(reason: Option<&str>) -> &'static str {
    match reason {
        Some("rows_removed") => {
            "on a standby, turn on hot_standby_feedback and use a physical slot between primary and standby"
        }
        Some("wal_level_insufficient") => "keep wal_level = logical on the primary",
        Some("idle_timeout") => {
            "keep walhouse-capture running, or raise idle_replication_slot_timeout (0 turns it off)"
        }
        _ => "raise max_slot_wal_keep_size to keep this from recurring",
    }
}

/// The reason in a server's invalidation message, e.g. `This replication
/// slot has been invalidated due to "wal_removed".` (Postgres 17+).
fn reason_in(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("invalidated due to \"")?;
    rest.split_once('"').map(|(reason, _)| reason.to_owned())
}

/// tokio-postgres prints a server error as just "db error": name the code,
/// message, detail and hint instead.
pub fn sql_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            m
        }
        None => e.to_string(),
    }
}

impl SourceError {
    /// Maps a server error to the variant naming its fix, given what walhouse
    /// was doing (the slot and publication in use).
    pub fn from_server(e: ServerError, ctx: &ErrorContext<'_>) -> SourceError {
        let msg = e.message.as_str();
        match e.code.as_str() {
            "28P01" | "28000" if msg.contains("replication") && msg.contains("pg_hba") => SourceError::Auth {
                user: ctx.user.into(),
                message: format!("{msg}: no pg_hba.conf line allows replication connections"),
            },
            "28P01" | "28000" => SourceError::Auth {
                user: ctx.user.into(),
                message: e.message,
            },
            // 15: "must be superuser or replication role to start walsender";
            // 16+: "permission denied to start WAL sender".
            "42501"
                if msg.contains("replication")
                    || msg.contains("walsender")
                    || msg.contains("WAL sender")
                    || e.detail.as_deref().is_some_and(|d| d.contains("REPLICATION")) =>
            {
                SourceError::MissingReplicationPrivilege { user: ctx.user.into() }
            }
            "55006" => SourceError::SlotActive {
                slot: ctx.slot.into(),
                pid: msg
                    .rsplit(' ')
                    .next()
                    .and_then(|p| p.trim_end_matches('.').parse().ok()),
            },
            "42704" if msg.contains("publication") => SourceError::PublicationMissing {
                publication: ctx.publication.into(),
                dbname: ctx.dbname.into(),
            },
            "55000" if msg.contains("wal_level") => SourceError::WalLevelNotLogical {
                actual: "replica or minimal".into(),
            },
            "55000"
                if msg.contains("invalidated")
                    || msg.contains("can no longer get changes")
                    || e.detail.as_deref().is_some_and(|d| d.contains("invalidated")) =>
            {
                SourceError::SlotInvalidated {
                    slot: ctx.slot.into(),
                    reason: reason_in(msg).or_else(|| e.detail.as_deref().and_then(reason_in)),
                }
            }
            _ => SourceError::Server(e),
        }
    }

    /// A notice that means data would be lost if streaming went on. From
    /// Postgres 18 on, pgoutput skips a publication that does not exist
    /// with a WARNING (`skipped loading publication "p"`) and streams on
    /// without the changes it would have published; earlier versions
    /// failed with an error. walhouse stops as before: the skipped
    /// changes would otherwise be acknowledged and gone.
    pub fn from_notice(notice: &ServerError, ctx: &ErrorContext<'_>) -> Option<SourceError> {
        // A failover slot's changes wait for the physical slots named in
        // synchronized_standby_slots (Postgres 17+). A named slot that does
        // not exist, is logical or was invalidated never catches up: the
        // stream would stall for good with only this warning, so stop with
        // the server's hint. A standby that is merely down is waited for
        // (see [`is_standby_wait`]).
        if is_standby_wait(notice) && !notice.message.contains("does not have active_pid") {
            return Some(SourceError::StandbySlotsBroken {
                message: notice.message.clone(),
                hint: notice
                    .hint
                    .clone()
                    .unwrap_or_else(|| "correct synchronized_standby_slots on the source".into()),
            });
        }
        // ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, raised in pgoutput's
        // LoadPublications; the hint is checked too in case the message is
        // translated.
        let skipped = notice.code == "55000"
            && (notice.message.contains("skipped loading publication")
                || notice.hint.as_deref().is_some_and(|h| h.contains("publication")));
        skipped.then(|| SourceError::PublicationMissing {
            publication: notice
                .message
                .split('"')
                .nth(1)
                .map_or_else(|| ctx.publication.to_owned(), str::to_owned),
            dbname: ctx.dbname.into(),
        })
    }

    /// Whether reconnecting may help: a lost connection or a server that is
    /// shutting down or starting up. Everything else needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            // NoHost: during a failover no host is the primary until the
            // standby is promoted.
            SourceError::ConnectionLost(_) | SourceError::Connect { .. } | SourceError::NoHost { .. } => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now
            SourceError::Server(e) => matches!(e.code.as_str(), "57P01" | "57P02" | "57P03"),
            // Only a broken connection; a query that fails is not cured by retrying.
            SourceError::Sql(e) => {
                e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }
}

/// Whether `notice` says the walsender waits for a standby named in
/// `synchronized_standby_slots` before sending a failover slot's changes.
pub fn is_standby_wait(notice: &ServerError) -> bool {
    notice.message.contains("synchronized_standby_slots")
        || notice
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("Logical replication is waiting"))
}

/// What walhouse was using when an error came, so messages can name it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorContext<'a> {
    pub user: &'a str,
    pub dbname: &'a str,
    pub slot: &'a str,
    pub publication: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ServerError {
        ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    const CTX: ErrorContext<'static> = ErrorContext {
        user: "rep",
        dbname: "shop",
        slot: "walhouse",
        publication: "walhouse",
    };

    #[test]
    fn parses_error_response_fields() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"walhouse\" is active for PID 4242\0Hstop it\0\0";
        let e = ServerError::parse(body);
        assert_eq!(e.code, "55006");
        assert_eq!(e.hint.as_deref(), Some("stop it"));
        match SourceError::from_server(e, &CTX) {
            SourceError::SlotActive { slot, pid } => {
                assert_eq!(slot, "walhouse");
                assert_eq!(pid, Some(4242));
            }
            other => panic!("expected SlotActive, got {other:?}"),
        }
    }

    #[test]
    fn a_broken_standby_slot_stops_and_a_stopped_standby_is_waited_for() {
        let notice = |message: &str, hint: &str| ServerError {
            severity: "WARNING".into(),
            code: "22023".into(),
            message: message.into(),
            detail: Some(
                "Logical replication is waiting on the standby associated with replication slot \"sb\".".into(),
            ),
            hint: Some(hint.into()),
        };
        let missing = notice(
            "replication slot \"sb\" specified in parameter \"synchronized_standby_slots\" does not exist",
            "Create the replication slot \"sb\" or amend parameter \"synchronized_standby_slots\".",
        );
        let Some(e @ SourceError::StandbySlotsBroken { .. }) = SourceError::from_notice(&missing, &CTX) else {
            panic!("a missing standby slot stops capture")
        };
        assert!(e.to_string().contains("Create the replication slot \"sb\""), "{e}");
        let down = notice(
            "replication slot \"sb\" specified in parameter \"synchronized_standby_slots\" does not have active_pid",
            "Start the standby associated with the replication slot \"sb\", or amend parameter \"synchronized_standby_slots\".",
        );
        assert!(is_standby_wait(&down));
        assert!(
            SourceError::from_notice(&down, &CTX).is_none(),
            "a standby that is down is waited for"
        );
    }

    #[test]
    fn a_skipped_publication_is_an_error_not_a_notice() {
        let notice = ServerError {
            severity: "WARNING".into(),
            hint: Some("Create the publication if it does not exist.".into()),
            detail: Some("The publication does not exist at this point in the WAL.".into()),
            ..server("55000", "skipped loading publication \"orders_pub\"")
        };
        match SourceError::from_notice(&notice, &CTX) {
            Some(SourceError::PublicationMissing { publication, .. }) => assert_eq!(publication, "orders_pub"),
            other => panic!("expected PublicationMissing, got {other:?}"),
        }
        let harmless = ServerError {
            severity: "NOTICE".into(),
            ..server("00000", "something informative")
        };
        assert!(SourceError::from_notice(&harmless, &CTX).is_none());
    }

    #[test]
    fn classifies_the_errors_operators_meet() {
        let cases = [
            (
                server("42501", "must be superuser or replication role to start walsender"),
                "REPLICATION",
            ),
            (
                server("42704", "publication \"walhouse\" does not exist"),
                "CREATE PUBLICATION",
            ),
            (
                server("55000", "logical decoding requires wal_level >= logical"),
                "wal_level = logical",
            ),
            (
                server("55000", "can no longer get changes from replication slot \"walhouse\""),
                "new slot",
            ),
            (
                server("28P01", "password authentication failed for user \"rep\""),
                "pg_hba.conf",
            ),
            (
                ServerError {
                    detail: Some(
                        "This slot has been invalidated because it exceeded the maximum reserved size.".into(),
                    ),
                    ..server("55000", "cannot read from logical replication slot \"walhouse\"")
                },
                "new slot",
            ),
            (
                ServerError {
                    detail: Some("This replication slot has been invalidated due to \"idle_timeout\".".into()),
                    ..server("55000", "can no longer access replication slot \"walhouse\"")
                },
                "idle_replication_slot_timeout",
            ),
        ];
        for (e, fix) in cases {
            let text = SourceError::from_server(e.clone(), &CTX).to_string();
            assert!(text.contains(fix), "{e:?} -> {text:?} should mention {fix:?}");
        }
        assert!(SourceError::from_server(server("57P01", "terminating"), &CTX).is_transient());
        // Postgres 16+ words the missing REPLICATION attribute differently.
        let denied = ServerError {
            detail: Some("Only roles with the REPLICATION attribute may start a WAL sender process.".into()),
            ..server("42501", "permission denied to start WAL sender")
        };
        assert!(matches!(
            SourceError::from_server(denied, &CTX),
            SourceError::MissingReplicationPrivilege { .. }
        ));
        assert!(!SourceError::from_server(server("42601", "syntax"), &CTX).is_transient());
    }
}
