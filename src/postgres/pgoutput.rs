//! pgoutput message decoding: bytes in, typed messages out, nothing else.
//!
//! Each XLogData payload of a `pgoutput` replication stream is one logical
//! replication message, laid out as in
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//! Decoding is pure and never panics: any input, truncated or hostile,
//! yields either a message or a [`DecodeError`] saying what was wrong.
//! Values are zero-copy slices of the payload (`Bytes`), so a row costs no
//! allocation beyond its column vector.
//!
//! Protocol 2 adds streamed in-progress transactions: between Stream Start
//! and Stream Stop, data messages carry a leading transaction id. The
//! [`Decoder`] tracks that one bit of state; everything else is stateless.

use bytes::{Buf, Bytes};

use super::lsn::Lsn;

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A commit or send time as Postgres encodes it: microseconds since 2000-01-01 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_OFFSET_MICROS)
    }

    pub fn from_unix_micros(micros: i64) -> Self {
        PgTimestamp(micros.saturating_sub(PG_EPOCH_OFFSET_MICROS))
    }

    pub fn unix_millis(self) -> i64 {
        self.unix_micros().div_euclid(1000)
    }

    /// The wall clock now: walhouse's one clock (the capture's event
    /// times, the sink's ingestion times, status updates to Postgres).
    pub fn now() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Self::from_unix_micros(micros)
    }
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl LogicalMessage {
    /// The (sub)transaction xid a message inside a stream block carries.
    pub fn stream_xid(&self) -> Option<u32> {
        match self {
            LogicalMessage::Relation(m) => m.xid,
            LogicalMessage::Type(m) => m.xid,
            LogicalMessage::Insert(m) => m.xid,
            LogicalMessage::Update(m) => m.xid,
            LogicalMessage::Delete(m) => m.xid,
            LogicalMessage::Truncate(m) => m.xid,
            LogicalMessage::Message(m) => m.xid,
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the
    /// transaction is durable downstream.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// `relreplident`: which old values an UPDATE or DELETE carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing; updates and deletes carry no old values.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Result<Self, DecodeError> {
        match b {
            b'd' => Ok(Self::Default),
            b'n' => Ok(Self::Nothing),
            b'f' => Ok(Self::Full),
            b'i' => Ok(Self::Index),
            other => Err(DecodeError::UnknownReplicaIdentity(other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Nothing => "nothing",
            Self::Full => "full",
            Self::Index => "index",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// Positions of the replica identity's columns (empty without one).
    pub fn identity_positions(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect()
    }
}

/// A non-builtin type's name, sent before the first Relation that uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeMessage {
    pub xid: Option<u32>,
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value the update did not change, so Postgres did not send
    /// it. It is not NULL: the column still holds its previous value.
    UnchangedToast,
    /// The value in Postgres's text output form.
    Text(Bytes),
    /// The value in the type's binary send form (only with `binary 'true'`).
    Binary(Bytes),
}

pub type Tuple = Vec<TupleValue>;

#[derive(Clone, Debug, PartialEq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation_id: u32,
    pub new: Tuple,
}

/// The old values an UPDATE or DELETE carries, by replica identity.
#[derive(Clone, Debug, PartialEq)]
pub enum OldTuple {
    /// `K`: key columns only (other positions are Null).
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation_id: u32,
    /// Absent when the key did not change and identity is not FULL.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation_id: u32,
    pub old: OldTuple,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// A `pg_logical_emit_message` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
}

/// Why a payload is not a valid pgoutput message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error(
        "unknown pgoutput message tag {0:#04x} (is the slot using a newer protocol version than walhouse asked for?)"
    )]
    UnknownTag(u8),
    #[error("pgoutput message {tag:?} truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { tag: char, offset: usize, needed: usize },
    #[error("pgoutput message {tag:?}: string at offset {offset} has no terminating NUL")]
    UnterminatedString { tag: char, offset: usize },
    #[error("pgoutput message {tag:?}: string at offset {offset} is not UTF-8 (the replication connection asks for client_encoding UTF8)")]
    InvalidUtf8 { tag: char, offset: usize },
    #[error("pgoutput message {tag:?}: unknown tuple value kind {kind:#04x} at offset {offset}")]
    UnknownValueKind { tag: char, kind: u8, offset: usize },
    #[error("pgoutput message {tag:?}: expected tuple marker {expected} but found {found:#04x}")]
    UnexpectedTupleMarker {
        tag: char,
        expected: &'static str,
        found: u8,
    },
    #[error("pgoutput message {tag:?}: negative length {len}")]
    NegativeLength { tag: char, len: i32 },
    #[error("unknown replica identity {0:#04x}")]
    UnknownReplicaIdentity(u8),
    #[error("pgoutput message {tag:?}: {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
}

/// Decodes a stream of pgoutput messages, tracking whether it is inside a
/// streamed (protocol 2) transaction, where data messages carry an xid.
#[derive(Debug, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for messages read back from inside a stream block, where
    /// every data message carries its xid.
    pub fn streamed() -> Self {
        Decoder { in_stream: true }
    }

    /// Decodes one XLogData payload.
    pub fn decode(&mut self, payload: Bytes) -> Result<LogicalMessage, DecodeError> {
        let tag = *payload.first().ok_or(DecodeError::Empty)?;
        let mut r = Reader {
            tag: tag as char,
            buf: payload,
            pos: 1,
        };
        let msg = match tag {
            b'B' => LogicalMessage::Begin(Begin {
                final_lsn: r.lsn()?,
                commit_time: PgTimestamp(r.i64()?),
                xid: r.u32()?,
            }),
            b'C' => LogicalMessage::Commit(Commit {
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time: PgTimestamp(r.i64()?),
            }),
            b'O' => LogicalMessage::Origin(Origin {
                commit_lsn: r.lsn()?,
                name: r.cstring()?,
            }),
            b'R' => {
                let xid = self.stream_xid(&mut r)?;
                let id = r.u32()?;
                let namespace = r.cstring()?;
                let name = r.cstring()?;
                let replica_identity = ReplicaIdentity::from_byte(r.u8()?)?;
                let ncols = r.count16()?;
                // Each column needs at least 10 bytes; cap the allocation by
                // what the payload could hold so a hostile count cannot OOM.
                let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
                for _ in 0..ncols {
                    columns.push(RelationColumn {
                        is_key: r.u8()? & 1 == 1,
                        name: r.cstring()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                LogicalMessage::Relation(Relation {
                    xid,
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => LogicalMessage::Type(TypeMessage {
                xid: self.stream_xid(&mut r)?,
                id: r.u32()?,
                namespace: r.cstring()?,
                name: r.cstring()?,
            }),
            b'I' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                r.expect_marker(b'N', "'N'")?;
                LogicalMessage::Insert(Insert {
                    xid,
                    relation_id,
                    new: r.tuple()?,
                })
            }
            b'U' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                let old = match r.u8()? {
                    b'K' => Some(OldTuple::Key(r.tuple()?)),
                    b'O' => Some(OldTuple::Full(r.tuple()?)),
                    b'N' => None,
                    found => {
                        return Err(DecodeError::UnexpectedTupleMarker {
                            tag: 'U',
                            expected: "'K', 'O' or 'N'",
                            found,
                        })
                    }
                };
                if old.is_some() {
                    r.expect_marker(b'N', "'N'")?;
                }
                LogicalMessage::Update(Update {
                    xid,
                    relation_id,
                    old,
                    new: r.tuple()?,
                })
            }
            b'D' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                let old = match r.u8()? {
                    b'K' => OldTuple::Key(r.tuple()?),
                    b'O' => OldTuple::Full(r.tuple()?),
                    found => {
                        return Err(DecodeError::UnexpectedTupleMarker {
                            tag: 'D',
                            expected: "'K' or 'O'",
                            found,
                        })
                    }
                };
                LogicalMessage::Delete(Delete { xid, relation_id, old })
            }
            b'T' => {
                let xid = self.stream_xid(&mut r)?;
                let n = r.count32()?;
                let options = r.u8()?;
                let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
                for _ in 0..n {
                    relation_ids.push(r.u32()?);
                }
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_ids,
                })
            }
            b'M' => {
                let xid = self.stream_xid(&mut r)?;
                let transactional = r.u8()? & 1 == 1;
                let lsn = r.lsn()?;
                let prefix = r.cstring()?;
                let len = r.count32()?;
                LogicalMessage::Message(Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content: r.bytes(len)?,
                })
            }
            b'S' => {
                let start = StreamStart {
                    xid: r.u32()?,
                    first_segment: r.u8()? == 1,
                };
                self.in_stream = true;
                LogicalMessage::StreamStart(start)
            }
            b'E' => {
                self.in_stream = false;
                LogicalMessage::StreamStop
            }
            b'c' => LogicalMessage::StreamCommit(StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time: PgTimestamp(r.i64()?),
            }),
            // Protocol 4 appends abort LSN and time; we ask for at most 2,
            // so only the two xids are read and anything after is ignored.
            b'A' => {
                let abort = StreamAbort {
                    xid: r.u32()?,
                    subxid: r.u32()?,
                };
                return Ok(LogicalMessage::StreamAbort(abort));
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn stream_xid(&self, r: &mut Reader) -> Result<Option<u32>, DecodeError> {
        if self.in_stream {
            Ok(Some(r.u32()?))
        } else {
            Ok(None)
        }
    }
}

/// A bounds-checked cursor over one payload.
struct Reader {
    tag: char,
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(self.take(2)?.get_i16())
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.take(4)?.get_i32())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.take(4)?.get_u32())
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.take(8)?.get_i64())
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.take(8)?.get_u64()))
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength {
            tag: self.tag,
            len: n.into(),
        })
    }

    fn count32(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength { tag: self.tag, len: n })
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.take(n)?;
        Ok(self.buf.slice(self.pos - n..self.pos))
    }

    fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.buf[start..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                tag: self.tag,
                offset: start,
            })?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset: start,
        })?;
        let s = s.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn expect_marker(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let found = self.u8()?;
        if found == want {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedTupleMarker {
                tag: self.tag,
                expected,
                found,
            })
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.count16()?;
        let mut values = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let offset = self.pos;
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count32()?;
                    TupleValue::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.count32()?;
                    TupleValue::Binary(self.bytes(len)?)
                }
                kind => {
                    return Err(DecodeError::UnknownValueKind {
                        tag: self.tag,
                        kind,
                        offset,
                    })
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { tag: self.tag, extra }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// Builds payloads the way walsender does, for fixtures.
    pub(crate) struct Enc(BytesMut);

    impl Enc {
        pub(crate) fn new(tag: u8) -> Self {
            let mut b = BytesMut::new();
            b.put_u8(tag);
            Enc(b)
        }
        pub(crate) fn u8(mut self, v: u8) -> Self {
            self.0.put_u8(v);
            self
        }
        pub(crate) fn i16(mut self, v: i16) -> Self {
            self.0.put_i16(v);
            self
        }
        pub(crate) fn i32(mut self, v: i32) -> Self {
            self.0.put_i32(v);
            self
        }
        pub(crate) fn u64(mut self, v: u64) -> Self {
            self.0.put_u64(v);
            self
        }
        pub(crate) fn s(mut self, v: &str) -> Self {
            self.0.put_slice(v.as_bytes());
            self.0.put_u8(0);
            self
        }
        pub(crate) fn text(mut self, v: &[u8]) -> Self {
            self.0.put_u8(b't');
            self.0.put_i32(v.len() as i32);
            self.0.put_slice(v);
            self
        }
        pub(crate) fn done(self) -> Bytes {
            self.0.freeze()
        }
    }

    pub(crate) fn fixtures() -> Vec<Bytes> {
        vec![
            Enc::new(b'B').u64(0x1_0000_0010).u64(5).i32(700).done(),
            Enc::new(b'C').u8(0).u64(0x10).u64(0x20).u64(77).done(),
            Enc::new(b'O').u64(0x10).s("origin1").done(),
            Enc::new(b'R')
                .i32(16384)
                .s("public")
                .s("t")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .s("id")
                .i32(23)
                .i32(-1)
                .u8(0)
                .s("v")
                .i32(25)
                .i32(-1)
                .done(),
            Enc::new(b'Y').i32(99999).s("public").s("mood").done(),
            Enc::new(b'I')
                .i32(16384)
                .u8(b'N')
                .i16(3)
                .text(b"1")
                .u8(b'n')
                .u8(b'u')
                .done(),
            Enc::new(b'U')
                .i32(16384)
                .u8(b'O')
                .i16(1)
                .text(b"1")
                .u8(b'N')
                .i16(1)
                .text(b"2")
                .done(),
            Enc::new(b'U').i32(16384).u8(b'N').i16(1).text(b"2").done(),
            Enc::new(b'D').i32(16384).u8(b'K').i16(1).text(b"1").done(),
            Enc::new(b'T').i32(2).u8(3).i32(1).i32(2).done(),
            Enc::new(b'M')
                .u8(1)
                .u64(0x42)
                .s("walhouse")
                .i32(3)
                .u8(b'a')
                .u8(b'b')
                .u8(b'c')
                .done(),
            Enc::new(b'S').i32(900).u8(1).done(),
            Enc::new(b'E').done(),
            Enc::new(b'c').i32(900).u8(0).u64(1).u64(2).u64(3).done(),
            Enc::new(b'A').i32(900).i32(901).done(),
        ]
    }

    #[test]
    fn decodes_every_protocol_one_message() {
        let mut d = Decoder::new();
        let decoded: Vec<_> = fixtures()
            .into_iter()
            .map(|b| d.decode(b).expect("fixture decodes"))
            .collect();
        assert_eq!(
            decoded[0],
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: PgTimestamp(5),
                xid: 700
            })
        );
        assert_eq!(
            decoded[1],
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x20),
                commit_time: PgTimestamp(77)
            })
        );
        let LogicalMessage::Relation(rel) = &decoded[3] else {
            panic!("expected relation, got {:?}", decoded[3]);
        };
        assert_eq!(rel.id, 16384);
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
        assert_eq!(rel.columns[1].type_oid, 25);
        assert_eq!(
            decoded[5],
            LogicalMessage::Insert(Insert {
                xid: None,
                relation_id: 16384,
                new: vec![
                    TupleValue::Text(Bytes::from_static(b"1")),
                    TupleValue::Null,
                    TupleValue::UnchangedToast
                ]
            })
        );
        let LogicalMessage::Update(u) = &decoded[6] else {
            panic!("expected update");
        };
        assert_eq!(
            u.old,
            Some(OldTuple::Full(vec![TupleValue::Text(Bytes::from_static(b"1"))]))
        );
        let LogicalMessage::Update(u) = &decoded[7] else {
            panic!("expected update");
        };
        assert_eq!(u.old, None);
        let LogicalMessage::Truncate(t) = &decoded[9] else {
            panic!("expected truncate");
        };
        assert!(t.cascade && t.restart_identity);
        assert_eq!(t.relation_ids, vec![1, 2]);
        let LogicalMessage::Message(m) = &decoded[10] else {
            panic!("expected message");
        };
        assert!(m.transactional);
        assert_eq!(m.prefix, "walhouse");
        assert_eq!(&m.content[..], b"abc");
        assert_eq!(
            decoded[14],
            LogicalMessage::StreamAbort(StreamAbort { xid: 900, subxid: 901 })
        );
    }

    #[test]
    fn streamed_messages_carry_an_xid_between_start_and_stop() {
        let mut d = Decoder::new();
        d.decode(Enc::new(b'S').i32(900).u8(1).done()).expect("start");
        let insert = Enc::new(b'I').i32(900).i32(16384).u8(b'N').i16(1).text(b"x").done();
        let LogicalMessage::Insert(i) = d.decode(insert).expect("insert") else {
            panic!("expected insert");
        };
        assert_eq!(i.xid, Some(900));
        assert_eq!(i.relation_id, 16384);
        d.decode(Enc::new(b'E').done()).expect("stop");
        // Outside the stream the same layout would misparse: the xid is gone.
        let plain = Enc::new(b'I').i32(16384).u8(b'N').i16(0).done();
        assert!(matches!(d.decode(plain), Ok(LogicalMessage::Insert(_))));
    }

    #[test]
    fn errors_name_the_problem() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(d.decode(Bytes::from_static(b"Z")), Err(DecodeError::UnknownTag(b'Z')));
        assert!(matches!(
            d.decode(Bytes::from_static(b"B\0\0")),
            Err(DecodeError::Truncated { tag: 'B', .. })
        ));
        let bad_kind = Enc::new(b'I').i32(1).u8(b'N').i16(1).u8(b'x').done();
        assert!(matches!(
            d.decode(bad_kind),
            Err(DecodeError::UnknownValueKind { kind: b'x', .. })
        ));
        let negative = Enc::new(b'I').i32(1).u8(b'N').i16(-1).done();
        assert!(matches!(
            d.decode(negative),
            Err(DecodeError::NegativeLength { len: -1, .. })
        ));
    }

    /// xorshift64*: a reproducible source of garbage without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn never_panics_on_truncations_mutations_or_noise() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for fixture in fixtures() {
            for streaming in [false, true] {
                // Every truncation of every valid message.
                for cut in 0..fixture.len() {
                    let mut d = Decoder { in_stream: streaming };
                    let _ = d.decode(fixture.slice(..cut));
                }
                // Random byte flips keep the tag, so each decoder path is hit.
                for _ in 0..2_000 {
                    let mut bytes = fixture.to_vec();
                    let flips = 1 + (rng.next() % 4) as usize;
                    for _ in 0..flips {
                        let i = 1 + (rng.next() as usize) % (bytes.len().max(2) - 1);
                        if let Some(b) = bytes.get_mut(i) {
                            *b = rng.next() as u8;
                        }
                    }
                    let mut d = Decoder { in_stream: streaming };
                    let _ = d.decode(Bytes::from(bytes));
                }
            }
        }
        // Pure noise, including huge declared lengths and counts.
        for _ in 0..50_000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut d = Decoder {
                in_stream: rng.next().is_multiple_of(2),
            };
            let _ = d.decode(Bytes::from(bytes));
        }
    }
}
