//! Streamed in-progress transactions, kept on local disk until they end.
//!
//! With pgoutput protocol 2 and `streaming 'on'`, Postgres sends a large
//! transaction in blocks (Stream Start … Stream Stop) while it is still
//! running, instead of spilling it to the primary's own disk and decoding it
//! again at commit. Blocks of several transactions interleave with each other
//! and with ordinary transactions, and a transaction may still roll back, in
//! whole or a savepoint at a time. Nothing may reach Kafka before the commit,
//! so each open transaction's messages are appended here, as the raw payloads
//! the server sent, and replayed in order at Stream Commit.
//!
//! Memory stays bounded whatever the transaction's size: a spool is a file
//! written through a small buffer, and a replay reads it back the same way.
//! The total on disk is capped (`--spool-max-bytes`); past the cap capture
//! stops with the fix rather than fill the disk.
//!
//! A subtransaction's messages carry its own xid, so where each one starts in
//! its spool is remembered: a rolled-back savepoint cuts the file back to that
//! point ([protocol docs][p], Stream Abort). The Relation and Type messages in
//! the cut part are kept, because pgoutput sends a relation's schema once per
//! streamed transaction and will not send it again for the changes after the
//! savepoint.
//!
//! After a reconnect the server streams every open transaction again from its
//! first block, so spools never outlive a connection ([`Spools::clear`]).
//!
//! [p]: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::postgres::Lsn;

/// Write and read buffer per spool: big enough that a row costs no system
/// call, small enough that many open transactions cost little memory.
const BUFFER_BYTES: usize = 256 * 1024;

/// Each record: the message's LSN (8 bytes), its length (4), its payload.
const HEADER_BYTES: u64 = 12;

/// Spools are named `<xid>.spool`; nothing else in the directory is touched.
const EXTENSION: &str = "spool";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "cannot use spool directory {dir}: {source}. Fix: point --spool-dir at a writable directory on a local disk"
    )]
    Directory { dir: PathBuf, source: std::io::Error },
    #[error(
        "spool directory {dir} is in use by another walhouse-capture (the same slot name on another source?). \
         Fix: give each capture its own --spool-dir"
    )]
    InUse { dir: PathBuf },
    #[error(
        "cannot write or read spool file {path}: {source}. Fix: free space on that disk or point --spool-dir elsewhere"
    )]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the streamed transactions in progress need more than --spool-max-bytes ({max} bytes) in {dir}. \
         Fix: raise --spool-max-bytes (the disk needs that much free), or run with --stream-transactions false \
         so that Postgres keeps large transactions on its own disk until they commit"
    )]
    Full { dir: PathBuf, max: u64 },
    #[error("spool file {path} is damaged at byte {offset}: {what}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("the server sent a change of transaction {xid} outside a stream block")]
    OutsideBlock { xid: u32 },
}

/// One open streamed transaction's file.
struct Spool {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// Where each subtransaction's first message starts, by xid.
    subxacts: HashMap<u32, u64>,
}

impl Spool {
    fn create(path: PathBuf) -> Result<Self, SpoolError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Spool {
            path,
            out: BufWriter::with_capacity(BUFFER_BYTES, file),
            len: 0,
            subxacts: HashMap::new(),
        })
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn append(&mut self, lsn: Lsn, payload: &[u8]) -> Result<u64, SpoolError> {
        let len = u32::try_from(payload.len()).map_err(|_| SpoolError::Damaged {
            path: self.path.clone(),
            offset: self.len,
            what: "a message longer than 4 GiB",
        })?;
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(&lsn.0.to_be_bytes());
        header[8..].copy_from_slice(&len.to_be_bytes());
        self.out.write_all(&header).map_err(|e| self.io(e))?;
        self.out.write_all(payload).map_err(|e| self.io(e))?;
        let added = HEADER_BYTES + u64::from(len);
        self.len += added;
        Ok(added)
    }

    /// Cuts the file back to `offset`, keeping the schema messages that
    /// stood after it. Returns the bytes now freed.
    fn cut_back(&mut self, offset: u64) -> Result<u64, SpoolError> {
        self.out.flush().map_err(|e| self.io(e))?;
        let before = self.len;
        let path = self.path.clone();
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut kept = Vec::new();
        let mut records = Records {
            path: &path,
            input: BufReader::with_capacity(BUFFER_BYTES, &mut *file),
            offset,
        };
        while let Some((lsn, payload)) = records.next()? {
            if matches!(payload.first(), Some(b'R' | b'Y')) {
                kept.push((lsn, payload));
            }
        }
        drop(records);
        file.set_len(offset).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.len = offset;
        self.subxacts.retain(|_, start| *start < offset);
        for (lsn, payload) in kept {
            self.append(lsn, &payload)?;
        }
        Ok(before.saturating_sub(self.len))
    }
}

/// Every open streamed transaction's spool, and the block being received.
pub struct Spools {
    dir: PathBuf,
    max_bytes: u64,
    open: HashMap<u32, Spool>,
    /// The top-level xid of the current Stream Start … Stream Stop block.
    block: Option<u32>,
    bytes: u64,
    /// Held while this process uses the directory: a second capture with
    /// the same default directory would delete this one's spools at start.
    _lock: File,
}

impl Spools {
    /// Opens the spool directory, creating it, and removes spools a previous
    /// process left (their transactions will be streamed again).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir_err = |source| SpoolError::Directory {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::InUse { dir: dir.to_owned() }),
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        let spools = Spools {
            dir: dir.to_owned(),
            max_bytes,
            open: HashMap::new(),
            block: None,
            bytes: 0,
            _lock: lock,
        };
        for entry in fs::read_dir(dir).map_err(dir_err)? {
            let path = entry.map_err(dir_err)?.path();
            if path.extension().is_some_and(|e| e == EXTENSION) {
                fs::remove_file(&path).map_err(|source| SpoolError::Io { path, source })?;
            }
        }
        // Fails now, not at the first large transaction, if the directory
        // is not writable.
        let probe = spools.dir.join(format!("probe.{EXTENSION}"));
        File::create(&probe).map_err(dir_err)?;
        fs::remove_file(&probe).map_err(dir_err)?;
        Ok(spools)
    }

    /// Transactions streamed and not yet committed or rolled back.
    pub fn in_progress(&self) -> usize {
        self.open.len()
    }

    /// Bytes on disk across all open spools.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a stream block is being received: its messages belong here.
    pub fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// Stream Start. A first segment begins the transaction's spool afresh.
    pub fn start_block(&mut self, xid: u32, first_segment: bool) -> Result<(), SpoolError> {
        if first_segment || !self.open.contains_key(&xid) {
            self.drop_spool(xid);
            let spool = Spool::create(self.dir.join(format!("{xid}.{EXTENSION}")))?;
            self.open.insert(xid, spool);
        }
        self.block = Some(xid);
        Ok(())
    }

    /// Stream Stop.
    pub fn stop_block(&mut self) {
        self.block = None;
    }

    /// Appends one message of the current block; `message_xid` is the xid
    /// the message carries (a subtransaction's, or the top level's; none
    /// for an Origin).
    pub fn append(&mut self, message_xid: Option<u32>, lsn: Lsn, payload: &Bytes) -> Result<(), SpoolError> {
        let top = self.block.ok_or(SpoolError::OutsideBlock {
            xid: message_xid.unwrap_or(0),
        })?;
        let message_xid = message_xid.unwrap_or(top);
        let added = HEADER_BYTES + payload.len() as u64;
        if self.bytes.saturating_add(added) > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                max: self.max_bytes,
            });
        }
        let spool = self.open.get_mut(&top).ok_or(SpoolError::OutsideBlock { xid: top })?;
        if message_xid != top {
            let at = spool.len;
            spool.subxacts.entry(message_xid).or_insert(at);
        }
        self.bytes += spool.append(lsn, payload)?;
        Ok(())
    }

    /// Stream Abort: the whole transaction when `subxid == xid`, otherwise
    /// the subtransaction and everything after its start.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<(), SpoolError> {
        if xid == subxid {
            self.drop_spool(xid);
            return Ok(());
        }
        let Some(spool) = self.open.get_mut(&xid) else {
            return Ok(());
        };
        // A subtransaction that wrote nothing published has no start here.
        let Some(&start) = spool.subxacts.get(&subxid) else {
            return Ok(());
        };
        let freed = spool.cut_back(start)?;
        self.bytes = self.bytes.saturating_sub(freed);
        Ok(())
    }

    /// Stream Commit: the transaction's messages, to be replayed in order.
    /// `None` when nothing of it was streamed.
    pub fn commit(&mut self, xid: u32) -> Result<Option<Replay>, SpoolError> {
        let Some(spool) = self.open.remove(&xid) else {
            return Ok(None);
        };
        self.bytes = self.bytes.saturating_sub(spool.len);
        let len = spool.len;
        let path = spool.path.clone();
        let mut file = spool.out.into_inner().map_err(|e| SpoolError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.seek(SeekFrom::Start(0)).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Replay {
            input: BufReader::with_capacity(BUFFER_BYTES, file),
            path,
            offset: 0,
            len,
        }))
    }

    /// Drops every spool: after a reconnect each open transaction is
    /// streamed again from its first block.
    pub fn clear(&mut self) {
        let xids: Vec<u32> = self.open.keys().copied().collect();
        for xid in xids {
            self.drop_spool(xid);
        }
        self.block = None;
    }

    fn drop_spool(&mut self, xid: u32) {
        if let Some(spool) = self.open.remove(&xid) {
            self.bytes = self.bytes.saturating_sub(spool.len);
            drop(spool.out);
            remove_file(&spool.path);
        }
    }
}

/// Bytes in the spool files under `dir` now, as `status` shows them
/// (`None`: no such directory, so nothing was spooled on this host).
pub fn spooled_bytes(dir: &Path) -> Option<u64> {
    let entries = fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == EXTENSION))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
    )
}

/// Removes a spool file; a file that cannot go is only worth a warning, as
/// the next start clears the directory.
fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!("cannot remove spool file {}: {e}", path.display());
    }
}

impl Drop for Spools {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A committed transaction's messages read back from its spool; the file
/// goes when this does.
pub struct Replay {
    input: BufReader<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl Replay {
    /// The next message and the LSN it was sent at.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Bytes)>, SpoolError> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let mut records = Records {
            path: &self.path,
            input: &mut self.input,
            offset: self.offset,
        };
        let next = records.next()?;
        self.offset = records.offset;
        Ok(next)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        remove_file(&self.path);
    }
}

/// Reads records from a position of a spool file.
struct Records<'p, R> {
    path: &'p Path,
    input: R,
    offset: u64,
}

impl<R: Read> Records<'_, R> {
    fn next(&mut self) -> Result<Option<(Lsn, Bytes)>, SpoolError> {
        let mut header = [0u8; HEADER_BYTES as usize];
        match read_full(&mut self.input, &mut header) {
            Ok(0) => return Ok(None),
            Ok(n) if n < header.len() => return Err(self.damaged("a record header cut short")),
            Ok(_) => {}
            Err(source) => {
                return Err(SpoolError::Io {
                    path: self.path.to_owned(),
                    source,
                })
            }
        }
        let (lsn, len) = header.split_at(8);
        let lsn = Lsn(u64::from_be_bytes(lsn.try_into().unwrap_or([0; 8])));
        let len = u32::from_be_bytes(len.try_into().unwrap_or([0; 4])) as usize;
        let mut payload = vec![0u8; len];
        match read_full(&mut self.input, &mut payload) {
            Ok(n) if n == len => {}
            Ok(_) => return Err(self.damaged("a record cut short")),
            Err(source) => {
                return Err(SpoolError::Io {
                    path: self.path.to_owned(),
                    source,
                })
            }
        }
        self.offset += HEADER_BYTES + len as u64;
        Ok(Some((lsn, Bytes::from(payload))))
    }

    fn damaged(&self, what: &'static str) -> SpoolError {
        SpoolError::Damaged {
            path: self.path.to_owned(),
            offset: self.offset,
            what,
        }
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(tag: u8, n: u8) -> Bytes {
        Bytes::from(vec![tag, n, n, n])
    }

    fn replayed(spools: &mut Spools, xid: u32) -> Vec<(Lsn, Bytes)> {
        let mut replay = spools.commit(xid).expect("commit").expect("a spool");
        let mut out = Vec::new();
        while let Some(m) = replay.next_message().expect("read") {
            out.push(m);
        }
        out
    }

    /// Files in `dir` besides the lock.
    fn files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "lock"))
            .count()
    }

    #[test]
    fn interleaved_transactions_replay_their_own_messages_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spools::open(dir.path(), 1 << 20).expect("open");
        s.start_block(7, true).expect("start");
        s.append(Some(7), Lsn(1), &payload(b'I', 1)).expect("append");
        s.stop_block();
        s.start_block(8, true).expect("start");
        s.append(Some(8), Lsn(2), &payload(b'I', 2)).expect("append");
        s.stop_block();
        s.start_block(7, false).expect("start");
        s.append(Some(7), Lsn(3), &payload(b'I', 3)).expect("append");
        s.stop_block();
        assert_eq!(s.in_progress(), 2);
        assert_eq!(
            replayed(&mut s, 7),
            vec![(Lsn(1), payload(b'I', 1)), (Lsn(3), payload(b'I', 3))]
        );
        assert_eq!(replayed(&mut s, 8), vec![(Lsn(2), payload(b'I', 2))]);
        assert_eq!(s.bytes(), 0);
        assert_eq!(files(dir.path()), 0, "each spool goes with its replay");
    }

    #[test]
    fn a_rolled_back_savepoint_is_cut_out_but_its_schema_messages_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spools::open(dir.path(), 1 << 20).expect("open");
        s.start_block(10, true).expect("start");
        s.append(Some(10), Lsn(1), &payload(b'I', 1)).expect("append");
        s.append(Some(11), Lsn(2), &payload(b'R', 2)).expect("append");
        s.append(Some(11), Lsn(3), &payload(b'I', 3)).expect("append");
        s.append(Some(12), Lsn(4), &payload(b'I', 4)).expect("append");
        s.stop_block();
        s.abort(10, 11).expect("abort subxact");
        s.start_block(10, false).expect("start");
        s.append(Some(10), Lsn(5), &payload(b'I', 5)).expect("append");
        s.stop_block();
        assert_eq!(
            replayed(&mut s, 10),
            vec![
                (Lsn(1), payload(b'I', 1)),
                (Lsn(2), payload(b'R', 2)),
                (Lsn(5), payload(b'I', 5))
            ]
        );
    }

    #[test]
    fn an_aborted_transaction_leaves_nothing_and_a_first_segment_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spools::open(dir.path(), 1 << 20).expect("open");
        s.start_block(3, true).expect("start");
        s.append(Some(3), Lsn(1), &payload(b'I', 1)).expect("append");
        s.stop_block();
        s.abort(3, 3).expect("abort");
        assert_eq!((s.in_progress(), s.bytes(), files(dir.path())), (0, 0, 0));
        s.start_block(4, true).expect("start");
        s.append(Some(4), Lsn(1), &payload(b'I', 1)).expect("append");
        s.stop_block();
        // Streamed again after a reconnect: the first segment replaces it.
        s.start_block(4, true).expect("start");
        s.append(Some(4), Lsn(1), &payload(b'I', 9)).expect("append");
        s.stop_block();
        assert_eq!(replayed(&mut s, 4), vec![(Lsn(1), payload(b'I', 9))]);
    }

    #[test]
    fn the_cap_stops_with_the_fix_and_open_clears_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("99.spool"), b"left by a killed process").expect("write");
        fs::write(dir.path().join("keep.txt"), b"not ours").expect("write");
        let mut s = Spools::open(dir.path(), 40).expect("open");
        assert_eq!(files(dir.path()), 1, "only the leftover spool is removed");
        s.start_block(5, true).expect("start");
        s.append(Some(5), Lsn(1), &payload(b'I', 1)).expect("fits");
        s.append(Some(5), Lsn(2), &payload(b'I', 2)).expect("fits");
        let err = s.append(Some(5), Lsn(3), &payload(b'I', 3)).expect_err("over the cap");
        assert!(err.to_string().contains("--spool-max-bytes"), "{err}");
        assert!(matches!(
            s.append(Some(6), Lsn(4), &payload(b'I', 4)),
            Err(SpoolError::Full { .. })
        ));
        s.clear();
        assert_eq!(files(dir.path()), 1);
    }

    #[test]
    fn a_second_process_on_the_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Spools::open(dir.path(), 1 << 20).expect("open");
        let err = Spools::open(dir.path(), 1 << 20).err().expect("in use");
        assert!(matches!(err, SpoolError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--spool-dir"), "{err}");
        drop(first);
        Spools::open(dir.path(), 1 << 20).expect("free again");
    }

    #[test]
    fn a_message_outside_a_block_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spools::open(dir.path(), 1 << 20).expect("open");
        assert!(matches!(
            s.append(Some(1), Lsn(1), &payload(b'I', 1)),
            Err(SpoolError::OutsideBlock { xid: 1 })
        ));
    }
}
