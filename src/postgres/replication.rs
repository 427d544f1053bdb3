//! The replication-protocol connection: startup, authentication, replication
//! commands, the CopyBoth stream, keepalives and acknowledgements.
//!
//! tokio-postgres cannot open `replication=database` connections, so this
//! module speaks the protocol itself on top of `postgres-protocol`'s
//! frontend encoders (<https://www.postgresql.org/docs/15/protocol-replication.html>).
//!
//! # The acknowledgement contract
//! [`ReplicationStream::next`] hands out `(lsn, message)` pairs. The caller
//! calls [`ReplicationStream::acknowledge`] with a transaction's
//! [`Commit::end_lsn`](super::pgoutput::Commit) once every change of that
//! transaction is durable downstream. Status updates report as flushed only
//! the last acknowledged LSN, so after a crash or reconnect Postgres re-sends
//! every transaction that was not acknowledged. Row LSNs are never
//! acknowledged: several changes share one LSN and Begin shares the first
//! change's, so acknowledging a row would skip its siblings.
//!
//! When everything handed out has been acknowledged and no transaction is
//! open, a keepalive's WAL position is acknowledged too, so an idle or
//! filtered-out slot does not hold WAL on the server.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, timeout, Instant};

use super::conninfo::ConnInfo;
use super::error::{ErrorContext, ServerError, SourceError};
use super::lsn::Lsn;
use super::pgoutput::{Decoder, LogicalMessage};
use super::wire::{log_notice, unexpected, Frame, Session, Wire};

pub use super::wire::OUTPUT_SETTINGS;

/// How long a clean stop may wait for the server to end the stream.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// A slot made by `CREATE_REPLICATION_SLOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub name: String,
    /// Streaming from this slot starts exactly after this point; an exported
    /// snapshot shows the database as of this point.
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

/// What to ask of pgoutput in `START_REPLICATION`.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub publications: Vec<String>,
    /// pgoutput protocol version: 1 (PG 10+) or 2 (PG 14+, streamed transactions).
    pub proto_version: u8,
    /// Ask for in-progress transactions to be streamed (`streaming 'on'`,
    /// protocol 2+) instead of spilled to the server's disk until commit.
    pub streaming: bool,
    /// Include `pg_logical_emit_message` records.
    pub messages: bool,
    /// Send standby status at least this often.
    pub status_interval: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            publications: vec!["walhouse".into()],
            proto_version: 1,
            streaming: false,
            messages: true,
            status_interval: Duration::from_secs(1),
        }
    }
}

/// A rows-as-text result of a simple query.
pub type Rows = Vec<Vec<Option<String>>>;

/// A `replication=database` connection before streaming starts.
pub struct ReplicationClient {
    wire: Wire,
    user: String,
    dbname: String,
    server_version_num: u32,
    /// Create permanent slots with `FAILOVER` (Postgres 17+).
    failover: bool,
}

impl ReplicationClient {
    /// Connects, negotiates TLS per `sslmode`, and authenticates.
    pub async fn connect(info: &ConnInfo) -> Result<Self, SourceError> {
        let (wire, server_version_num) = Wire::connect(info, Session::Replication).await?;
        Ok(ReplicationClient {
            wire,
            user: info.user.clone(),
            dbname: info.dbname.clone(),
            server_version_num,
            failover: false,
        })
    }

    fn ctx(&self) -> ErrorContext<'_> {
        ErrorContext {
            user: &self.user,
            dbname: &self.dbname,
            ..Default::default()
        }
    }

    /// Asks for slots that survive a standby's promotion (`FAILOVER`,
    /// Postgres 17 and later; the standby must sync slots, see
    /// `sync_replication_slots`). Refused, with the reason, on older servers.
    pub fn with_failover(mut self, failover: bool) -> Result<Self, SourceError> {
        if failover && self.server_version_num < 170000 {
            return Err(SourceError::FailoverUnsupported {
                version: self.server_version_num,
            });
        }
        self.failover = failover;
        Ok(self)
    }

    /// The server's `server_version_num`-like number (150004 for 15.4).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Runs one command in the simple-query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, SourceError> {
        frontend::query(sql, &mut self.wire.outbuf).map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.wire.flush_out().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.wire.read_frame().await?;
            match f.tag {
                b'D' => rows.push(parse_data_row(f.body)?),
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'E' => error = Some(ServerError::parse(&f.body)),
                b'Z' => break,
                other => return Err(unexpected(other, "a query result")),
            }
        }
        match error {
            Some(e) => Err(SourceError::from_server(e, &self.ctx())),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemIdentity {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or_default(),
            xlogpos: col(2).and_then(|l| l.parse().ok()).unwrap_or_default(),
            dbname: col(3),
        })
    }

    fn create_slot_sql(&self, slot: &str, snapshot: &str, temporary: bool) -> String {
        let failover = if self.failover && !temporary {
            ", FAILOVER true"
        } else {
            ""
        };
        let temporary = if temporary { " TEMPORARY" } else { "" };
        if self.server_version_num >= 150000 {
            format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL pgoutput (SNAPSHOT '{snapshot}'{failover})")
        } else {
            let kw = if snapshot == "export" {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            };
            format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL pgoutput {kw}")
        }
    }

    async fn create_slot_with(
        &mut self,
        slot: &str,
        snapshot: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, SourceError> {
        validate_slot_name(slot)?;
        let sql = self.create_slot_sql(slot, snapshot, temporary);
        let rows = self.simple_query(&sql).await.map_err(|e| slot_context(e, slot))?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        let consistent_point = col(1)
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into()))?;
        Ok(CreatedSlot {
            name: col(0).unwrap_or_else(|| slot.to_owned()),
            consistent_point,
            snapshot_name: col(2),
        })
    }

    /// Creates a logical pgoutput slot without a snapshot.
    pub async fn create_slot(&mut self, slot: &str) -> Result<CreatedSlot, SourceError> {
        self.create_slot_with(slot, "nothing", false).await
    }

    /// Creates a slot and exports a snapshot of the database at its
    /// consistent point. The snapshot lives only while this connection stays
    /// open and idle, so the connection moves into the returned value: no
    /// other command can be sent until [`ExportedSnapshot::release`].
    pub async fn create_slot_exporting_snapshot(self, slot: &str) -> Result<ExportedSnapshot, SourceError> {
        self.export(slot, false).await
    }

    /// As [`create_slot_exporting_snapshot`](Self::create_slot_exporting_snapshot),
    /// with a temporary slot: it vanishes when this connection closes, so a
    /// snapshot cut off by a crash leaves no slot that could pass for done.
    pub async fn create_temporary_slot_exporting_snapshot(self, slot: &str) -> Result<ExportedSnapshot, SourceError> {
        self.export(slot, true).await
    }

    async fn export(mut self, slot: &str, temporary: bool) -> Result<ExportedSnapshot, SourceError> {
        let created = self.create_slot_with(slot, "export", temporary).await?;
        let snapshot_name = created
            .snapshot_name
            .clone()
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
        Ok(ExportedSnapshot {
            client: self,
            slot: created,
            snapshot_name,
        })
    }

    /// Starts streaming from `start` (or, for `0/0`, from the slot's
    /// confirmed position) and returns the stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: StreamOptions,
    ) -> Result<ReplicationStream, SourceError> {
        validate_slot_name(slot)?;
        let publications = options
            .publications
            .iter()
            .map(|p| crate::quote::ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start} (proto_version '{}', publication_names {}, messages '{}'{})",
            options.proto_version,
            crate::quote::literal(&publications),
            options.messages,
            if options.streaming { ", streaming 'on'" } else { "" },
        );
        frontend::query(&sql, &mut self.wire.outbuf).map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.wire.flush_out().await?;
        let publication = options.publications.join(",");
        let ctx = ErrorContext {
            user: &self.user,
            dbname: &self.dbname,
            slot,
            publication: &publication,
        };
        loop {
            let f = self.wire.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'N' => log_notice(&ServerError::parse(&f.body)),
                b'E' => {
                    let e = SourceError::from_server(ServerError::parse(&f.body), &ctx);
                    return Err(slot_context(e, slot));
                }
                other => return Err(unexpected(other, "START_REPLICATION")),
            }
        }
        let now = Instant::now();
        Ok(ReplicationStream {
            user: self.user,
            dbname: self.dbname,
            slot: slot.to_owned(),
            publication,
            wire: self.wire,
            decoder: Decoder::new(),
            progress: Progress {
                acknowledged: start,
                received: start,
                ..Progress::default()
            },
            status_interval: options.status_interval,
            next_status: now + options.status_interval,
            stream_ended: false,
            standby_waits: 0,
            standby_warned: None,
        })
    }
}

/// A slot's exported snapshot, alive while this value is.
pub struct ExportedSnapshot {
    client: ReplicationClient,
    slot: CreatedSlot,
    snapshot_name: String,
}

impl ExportedSnapshot {
    /// For `SET TRANSACTION SNAPSHOT '…'` on other connections.
    pub fn snapshot_name(&self) -> &str {
        &self.snapshot_name
    }

    pub fn slot(&self) -> &CreatedSlot {
        &self.slot
    }

    /// Ends the snapshot's life and gives the connection back, e.g. to
    /// start streaming from the slot's consistent point.
    pub fn release(self) -> ReplicationClient {
        self.client
    }
}

/// Where the stream stands: what was received, handed out and acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest LSN the caller declared durable; reported as flushed.
    pub acknowledged: Lsn,
    /// Highest WAL end seen in any message from the server.
    pub received: Lsn,
    /// Highest position handed out that needs an acknowledgement: a commit's
    /// end LSN, or a non-transactional message's LSN.
    pub handed_out: Lsn,
    /// Inside Begin … Commit (or a streamed transaction).
    pub in_transaction: bool,
}

impl Progress {
    /// Nothing handed out is still waiting for the caller.
    pub fn idle(&self) -> bool {
        !self.in_transaction && self.acknowledged >= self.handed_out
    }

    fn track(&mut self, lsn: Lsn, msg: &LogicalMessage) {
        match msg {
            LogicalMessage::Begin(_) | LogicalMessage::StreamStart(_) => self.in_transaction = true,
            LogicalMessage::Commit(c) => {
                self.in_transaction = false;
                self.handed_out = self.handed_out.max(c.end_lsn);
            }
            LogicalMessage::StreamCommit(c) => {
                self.in_transaction = false;
                self.handed_out = self.handed_out.max(c.end_lsn);
            }
            // Between blocks nothing is owed: a streamed transaction is owed
            // only from its Stream Commit, whose end LSN is handed out then.
            LogicalMessage::StreamStop => self.in_transaction = false,
            LogicalMessage::Message(m) if !m.transactional && !self.in_transaction => {
                self.handed_out = self.handed_out.max(lsn);
            }
            _ => {}
        }
    }
}

/// One message of the stream, as decoded and as sent.
pub struct Received {
    /// The WAL position the message starts at.
    pub lsn: Lsn,
    pub message: LogicalMessage,
    pub payload: Bytes,
}

/// A logical replication stream in CopyBoth mode.
pub struct ReplicationStream {
    wire: Wire,
    decoder: Decoder,
    progress: Progress,
    status_interval: Duration,
    next_status: Instant,
    user: String,
    dbname: String,
    slot: String,
    publication: String,
    /// The server sent CopyDone: nothing more will come.
    stream_ended: bool,
    /// Notices that the server waits for a standby before sending (see
    /// [`super::error::is_standby_wait`]), and when one was last logged.
    standby_waits: u64,
    standby_warned: Option<Instant>,
}

impl ReplicationStream {
    fn ctx(&self) -> ErrorContext<'_> {
        ErrorContext {
            user: &self.user,
            dbname: &self.dbname,
            slot: &self.slot,
            publication: &self.publication,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// How often the server said it waits for a standby before sending.
    pub fn standby_waits(&self) -> u64 {
        self.standby_waits
    }

    /// Declares everything up to `lsn` durable downstream. Never moves back.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.progress.acknowledged = self.progress.acknowledged.max(lsn);
    }

    /// Queues a standby status update reporting only what is acknowledged.
    fn queue_status(&mut self, reply_requested: bool) {
        // https://www.postgresql.org/docs/15/protocol-replication.html (Standby status update)
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(self.progress.received.max(self.progress.acknowledged).0);
        msg.put_u64(self.progress.acknowledged.0);
        msg.put_u64(self.progress.acknowledged.0);
        msg.put_i64(crate::postgres::pgoutput::PgTimestamp::now().0);
        msg.put_u8(u8::from(reply_requested));
        // A 34-byte body can never exceed CopyData's length limit.
        if let Ok(data) = frontend::CopyData::new(msg.freeze()) {
            data.write(&mut self.wire.outbuf);
        }
        self.next_status = Instant::now() + self.status_interval;
    }

    /// Sends a status update now (e.g. right after acknowledging, or while
    /// the caller waits downstream and cannot call [`next`](Self::next)).
    pub async fn send_status(&mut self) -> Result<(), SourceError> {
        self.queue_status(false);
        self.wire.flush_out().await
    }

    /// The next logical replication message with the WAL position it starts
    /// at, or `None` when the server ended the stream. Keepalives and status
    /// updates are handled inside. Cancel-safe: use it in `select!`.
    pub async fn next(&mut self) -> Result<Option<(Lsn, LogicalMessage)>, SourceError> {
        Ok(self.next_received().await?.map(|r| (r.lsn, r.message)))
    }

    /// As [`next`](Self::next), with the payload the message was decoded
    /// from (kept by whoever must store the message as sent).
    pub async fn next_received(&mut self) -> Result<Option<Received>, SourceError> {
        // Checked once per call, not only when the socket runs dry: during a
        // long catch-up there is always data, and the slot must still see
        // acknowledgements (made by the caller between calls) every interval.
        if self.wire.outbuf.is_empty() && Instant::now() >= self.next_status {
            self.queue_status(false);
        }
        loop {
            if !self.wire.outbuf.is_empty() {
                self.wire.flush_out().await?;
            }
            if let Some(frame) = self.wire.try_frame()? {
                if let Some(event) = self.handle(frame)? {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.stream_ended {
                return Ok(None);
            }
            tokio::select! {
                biased;
                r = self.wire.fill() => r?,
                _ = sleep_until(self.next_status) => self.queue_status(false),
            }
        }
    }

    /// Handles one frame; returns a message for the caller, if it is one.
    fn handle(&mut self, frame: Frame) -> Result<Option<Received>, SourceError> {
        match frame.tag {
            b'd' => {}
            b'c' => {
                self.stream_ended = true;
                return Ok(None);
            }
            b'E' => return Err(SourceError::from_server(ServerError::parse(&frame.body), &self.ctx())),
            b'N' => {
                let notice = ServerError::parse(&frame.body);
                if let Some(e) = SourceError::from_notice(&notice, &self.ctx()) {
                    return Err(e);
                }
                if super::error::is_standby_wait(&notice) {
                    self.standby_waits += 1;
                    // The server repeats it at every wakeup: once a minute.
                    if self
                        .standby_warned
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
                    {
                        return Ok(None);
                    }
                    self.standby_warned = Some(Instant::now());
                    tracing::warn!(
                        hint = notice.hint.as_deref().unwrap_or_default(),
                        "the source holds back this slot's changes until a standby named in synchronized_standby_slots \
                         confirms them: {}",
                        notice.message
                    );
                    return Ok(None);
                }
                log_notice(&notice);
                return Ok(None);
            }
            // CommandComplete and ReadyForQuery follow the server's CopyDone.
            b'C' | b'Z' => return Ok(None),
            other => return Err(unexpected(other, "the replication stream")),
        }
        let mut body = frame.body;
        match body.first() {
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                self.progress.received = self.progress.received.max(wal_end);
                let message = self
                    .decoder
                    .decode(body.clone())
                    .map_err(|source| SourceError::Decode { lsn: wal_start, source })?;
                self.progress.track(wal_start, &message);
                Ok(Some(Received {
                    lsn: wal_start,
                    message,
                    payload: body,
                }))
            }
            Some(b'k') if body.len() >= 18 => {
                body.advance(1);
                let wal_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                let reply_requested = body.get_u8() == 1;
                self.progress.received = self.progress.received.max(wal_end);
                if self.progress.idle() {
                    // Everything sent before this keepalive was handed out and
                    // acknowledged: nothing below wal_end is owed downstream.
                    self.acknowledge(wal_end);
                }
                if reply_requested {
                    self.queue_status(false);
                }
                Ok(None)
            }
            Some(&kind) => Err(SourceError::Protocol(format!(
                "CopyData of kind {:?} and {} bytes",
                kind as char,
                body.len()
            ))),
            None => Err(SourceError::Protocol("empty CopyData".into())),
        }
    }

    /// Ends streaming cleanly: reports the acknowledged LSN, sends CopyDone,
    /// waits (bounded) for the server to end the stream, and closes.
    /// Returns the acknowledged LSN the server was told.
    pub async fn stop(mut self) -> Result<Lsn, SourceError> {
        self.queue_status(false);
        frontend::copy_done(&mut self.wire.outbuf);
        self.wire.flush_out().await?;
        let acknowledged = self.progress.acknowledged;
        let drain = async {
            // Changes still in flight from the server are dropped unread:
            // they were not acknowledged, so the slot sends them again.
            loop {
                let f = self.wire.read_frame().await?;
                match f.tag {
                    b'Z' => return Ok(()),
                    b'E' => return Err(SourceError::from_server(ServerError::parse(&f.body), &self.ctx())),
                    _ => {}
                }
            }
        };
        match timeout(STOP_TIMEOUT, drain).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("the server did not end the stream within {STOP_TIMEOUT:?}; closing anyway"),
        }
        frontend::terminate(&mut self.wire.outbuf);
        // The server may already be gone; the acknowledgement was sent above.
        let _ = self.wire.flush_out().await;
        let _ = self.wire.socket.shutdown().await;
        Ok(acknowledged)
    }
}

fn parse_data_row(mut body: Bytes) -> Result<Vec<Option<String>>, SourceError> {
    let short = || SourceError::Protocol("truncated DataRow".into());
    if body.len() < 2 {
        return Err(short());
    }
    let n = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        if body.len() < 4 {
            return Err(short());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short());
        }
        row.push(Some(String::from_utf8_lossy(&body.split_to(len)).into_owned()));
    }
    Ok(row)
}

/// Slot names are restricted by Postgres to `[a-z0-9_]{1,63}`; checking
/// here means they never need quoting in replication commands.
pub fn validate_slot_name(slot: &str) -> Result<(), SourceError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::SlotUnusable {
            slot: slot.into(),
            problem: "is not a valid slot name (lower-case letters, digits and underscores, at most 63)".into(),
        })
    }
}

fn slot_context(e: SourceError, slot: &str) -> SourceError {
    match e {
        SourceError::SlotActive { pid, .. } => SourceError::SlotActive { slot: slot.into(), pid },
        SourceError::SlotInvalidated { reason, .. } => SourceError::SlotInvalidated {
            slot: slot.into(),
            reason,
        },
        SourceError::Server(s) if s.code == "42710" => SourceError::SlotUnusable {
            slot: slot.into(),
            problem: "already exists".into(),
        },
        SourceError::Server(s) if s.code == "42704" => SourceError::SlotUnusable {
            slot: slot.into(),
            problem: "does not exist".into(),
        },
        SourceError::Server(s) if s.code == "53400" => SourceError::SlotUnusable {
            slot: slot.into(),
            problem: format!("cannot be created: {} (raise max_replication_slots)", s.message),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::pgoutput::{Begin, Commit, Message, PgTimestamp};

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("walhouse_1").is_ok());
        for bad in ["", "Walhouse", "a-b", "a b", "x\"; DROP", &"a".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    fn commit(end: u64) -> LogicalMessage {
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(0),
        })
    }

    #[test]
    fn progress_is_idle_only_when_everything_handed_out_is_acknowledged() {
        let mut p = Progress::default();
        assert!(p.idle());
        p.track(
            Lsn(10),
            &LogicalMessage::Begin(Begin {
                final_lsn: Lsn(20),
                commit_time: PgTimestamp(0),
                xid: 1,
            }),
        );
        assert!(!p.idle(), "open transaction");
        p.track(Lsn(20), &commit(30));
        assert!(!p.idle(), "commit handed out but not acknowledged");
        p.acknowledged = Lsn(30);
        assert!(p.idle());
        p.track(
            Lsn(40),
            &LogicalMessage::Message(Message {
                xid: None,
                transactional: false,
                lsn: Lsn(40),
                prefix: "p".into(),
                content: Bytes::new(),
            }),
        );
        assert!(!p.idle(), "non-transactional message awaits acknowledgement");
        p.acknowledged = Lsn(40);
        assert!(p.idle());
    }

    #[test]
    fn data_rows() {
        let mut b = BytesMut::new();
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        assert_eq!(parse_data_row(b.freeze()).expect("row"), vec![Some("ab".into()), None]);
        assert!(parse_data_row(Bytes::from_static(&[0, 1, 0, 0, 0, 9])).is_err());
    }
}
