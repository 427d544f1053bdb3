//! Merging a chunk of rows read while streaming continues: the watermark
//! method of Netflix's DBLog and Debezium's incremental snapshots.
//!
//! The capture loop opens a [`Window`] for a chunk, then the chunk reader
//! writes a low watermark into the WAL, reads the chunk in a transaction of
//! its own (recording that transaction's [`XidSnapshot`]) and writes a high
//! watermark. Every streamed change of the chunk's table decoded while the
//! window is open is [`touch`](Window::touch)ed. When the high watermark
//! arrives, [`Window::keep`] decides per row whether the chunk's copy may
//! still be sent: a row whose key was changed by a transaction the read did
//! not see has a newer version already sent on the stream, so the chunk's
//! (older) copy is dropped. Every row sent is therefore either the latest
//! value of its key at the high watermark, or followed by a newer change.
//!
//! Pure logic, no I/O: the loop feeds it decoded changes and the reader's
//! result.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::postgres::pgoutput::{Tuple, TupleValue};

/// Which transactions a read saw: `pg_current_snapshot()` of its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XidSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl XidSnapshot {
    /// Parses `pg_snapshot`'s text form `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        let mut num = |what: &str| -> Result<u64, String> {
            parts
                .next()
                .ok_or_else(|| format!("snapshot {text:?} has no {what}"))?
                .parse()
                .map_err(|_| format!("snapshot {text:?}: {what} is not a number"))
        };
        let xmin = num("xmin")?;
        let xmax = num("xmax")?;
        let in_progress = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().map_err(|_| format!("snapshot {text:?}: bad xid {x:?}")))
                .collect::<Result<_, _>>()?,
        };
        Ok(XidSnapshot {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether a committed transaction `xid` (32 bits, as pgoutput sends
    /// it) is visible to this snapshot, i.e. the read includes its effects.
    pub fn sees(&self, xid: u32) -> bool {
        // Widen to the 64-bit xid nearest to xmax: decoded transactions are
        // far less than 2^31 xids away from any snapshot taken meanwhile.
        let delta = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        let Some(full) = self.xmax.checked_add_signed(delta) else {
            return false;
        };
        full < self.xmin || (full < self.xmax && !self.in_progress.contains(&full))
    }
}

/// A row's identity for merging: its key columns' values, length-prefixed.
pub type RowKey = Vec<u8>;

/// The key of `tuple` under `key_columns`; `None` when a key value was not
/// sent (an unchanged TOASTed key column).
pub fn row_key(tuple: &Tuple, key_columns: &[usize]) -> Option<RowKey> {
    let mut key = Vec::new();
    for &i in key_columns {
        match tuple.get(i)? {
            TupleValue::Null => key.push(0),
            TupleValue::Text(b) | TupleValue::Binary(b) => {
                key.push(1);
                key.extend_from_slice(&(b.len() as u64).to_le_bytes());
                key.extend_from_slice(b);
            }
            TupleValue::UnchangedToast => return None,
        }
    }
    Some(key)
}

/// The streamed changes of one table between a chunk's scheduling and its
/// high watermark.
#[derive(Debug)]
pub struct Window {
    pub relation_id: u32,
    low_seen: bool,
    /// Keys changed before the low watermark, with the changing xids: they
    /// matter only if the read did not see that transaction (a commit whose
    /// WAL record precedes the low watermark but that was not yet visible).
    before_low: HashMap<RowKey, Vec<u32>>,
    after_low: HashSet<RowKey>,
    /// A change whose key could not be known, or a truncate: the chunk
    /// cannot be merged safely and is read again.
    spoiled: Option<&'static str>,
}

/// What to do with a chunk's rows at its high watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    /// Send these rows (in read order).
    Send(Vec<Tuple>),
    /// Discard the read and read the chunk again, for this reason.
    Retry(&'static str),
}

impl Window {
    pub fn new(relation_id: u32) -> Self {
        Window {
            relation_id,
            low_seen: false,
            before_low: HashMap::new(),
            after_low: HashSet::new(),
            spoiled: None,
        }
    }

    pub fn low_watermark(&mut self) {
        self.low_seen = true;
    }

    /// A streamed insert, update (old and new key) or delete of the table,
    /// by transaction `xid`; `key` is `None` when it could not be known.
    pub fn touch(&mut self, key: Option<RowKey>, xid: u32) {
        let Some(key) = key else {
            self.spoiled = Some("a streamed change of the table did not carry its key");
            return;
        };
        if self.low_seen {
            self.after_low.insert(key);
        } else {
            self.before_low.entry(key).or_default().push(xid);
        }
    }

    /// The table was truncated while the chunk was read.
    pub fn truncated(&mut self) {
        self.spoiled = Some("the table was truncated while the chunk was read");
    }

    /// Decides on the chunk's rows read under `snapshot`. A keyless table
    /// (`key_columns` empty) cannot be merged: its rows are all sent, and
    /// may repeat rows the stream also carried. Without a snapshot (what
    /// the read saw is unknown) every key changed in the window is taken as
    /// stale: the stream carried its change after the window opened, so
    /// dropping the chunk's copy loses nothing.
    pub fn keep(self, rows: Vec<Tuple>, key_columns: &[usize], snapshot: Option<&XidSnapshot>) -> Merge {
        if let Some(reason) = self.spoiled {
            return Merge::Retry(reason);
        }
        if key_columns.is_empty() {
            return Merge::Send(rows);
        }
        let stale = |key: &RowKey| {
            self.after_low.contains(key)
                || self
                    .before_low
                    .get(key)
                    .is_some_and(|xids| xids.iter().any(|x| snapshot.is_none_or(|s| !s.sees(*x))))
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match row_key(&row, key_columns) {
                Some(k) if stale(&k) => {}
                Some(_) => out.push(row),
                None => return Merge::Retry("a chunk row has no key value"),
            }
        }
        Merge::Send(out)
    }
}

/// The text written as a watermark message: which capture process, which
/// chunk, low or high. A capture ignores watermarks that are not its own
/// (another instance's, or its own previous run's replayed from the slot).
pub fn watermark_content(nonce: u64, chunk: u64, high: bool) -> String {
    format!("{nonce:016x}:{chunk}:{}", if high { "high" } else { "low" })
}

/// Reads [`watermark_content`]: `(nonce, chunk, high)`.
pub fn parse_watermark(content: &Bytes) -> Option<(u64, u64, bool)> {
    let text = std::str::from_utf8(content).ok()?;
    let mut parts = text.split(':');
    let nonce = u64::from_str_radix(parts.next()?, 16).ok()?;
    let chunk = parts.next()?.parse().ok()?;
    let high = match parts.next()? {
        "high" => true,
        "low" => false,
        _ => return None,
    };
    parts.next().is_none().then_some((nonce, chunk, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, v: &str) -> Tuple {
        vec![
            TupleValue::Text(Bytes::copy_from_slice(id.as_bytes())),
            TupleValue::Text(Bytes::copy_from_slice(v.as_bytes())),
        ]
    }

    fn key(id: &str) -> Option<RowKey> {
        row_key(&row(id, ""), &[0])
    }

    #[test]
    fn snapshot_visibility() {
        let s = XidSnapshot::parse("100:105:101,103").expect("parse");
        assert!(s.sees(99) && s.sees(100) && s.sees(102) && s.sees(104));
        assert!(!s.sees(101) && !s.sees(103) && !s.sees(105) && !s.sees(200));
        // Across an epoch: xmax = 2^32 + 5, a 32-bit xid 4294967290 is the
        // previous epoch's (seen), 3 is this one's (seen), 7 is not yet.
        let s = XidSnapshot::parse("4294967296:4294967301:").expect("parse");
        assert!(s.sees(4_294_967_290) && s.sees(3) && !s.sees(7));
        assert!(XidSnapshot::parse("1:x:").is_err());
        assert!(XidSnapshot::parse("1").is_err());
    }

    #[test]
    fn rows_changed_in_the_window_are_dropped() {
        let snap = XidSnapshot::parse("100:105:103").expect("parse");
        let mut w = Window::new(7);
        w.touch(key("1"), 99); // before low, seen by the read: keep
        w.touch(key("2"), 103); // before low, not seen (in progress): drop
        w.low_watermark();
        w.touch(key("3"), 110); // after low: drop
        let rows = vec![row("1", "a"), row("2", "b"), row("3", "c"), row("4", "d")];
        assert_eq!(
            w.keep(rows, &[0], Some(&snap)),
            Merge::Send(vec![row("1", "a"), row("4", "d")])
        );
    }

    #[test]
    fn without_a_snapshot_every_key_changed_in_the_window_is_dropped() {
        let mut w = Window::new(7);
        // Seen by the read or not, the standby cannot tell: dropped.
        w.touch(key("1"), 99);
        w.low_watermark();
        w.touch(key("3"), 110);
        let rows = vec![row("1", "a"), row("3", "c"), row("4", "d")];
        assert_eq!(w.keep(rows, &[0], None), Merge::Send(vec![row("4", "d")]));
    }

    #[test]
    fn unknown_keys_and_truncates_retry_and_keyless_tables_send_all() {
        let snap = XidSnapshot::parse("1:2:").expect("parse");
        let mut w = Window::new(7);
        w.touch(None, 1);
        assert!(matches!(
            w.keep(vec![row("1", "a")], &[0], Some(&snap)),
            Merge::Retry(_)
        ));
        let mut w = Window::new(7);
        w.low_watermark();
        w.truncated();
        assert!(matches!(w.keep(vec![], &[0], Some(&snap)), Merge::Retry(_)));
        let mut w = Window::new(7);
        w.low_watermark();
        w.touch(key("1"), 5);
        assert_eq!(
            w.keep(vec![row("1", "a")], &[], Some(&snap)),
            Merge::Send(vec![row("1", "a")])
        );
    }

    #[test]
    fn keys_distinguish_null_empty_and_boundaries() {
        let t = |vals: Vec<TupleValue>| row_key(&vals, &[0, 1]);
        let text = |s: &'static str| TupleValue::Text(Bytes::from_static(s.as_bytes()));
        assert_ne!(t(vec![text("ab"), text("c")]), t(vec![text("a"), text("bc")]));
        assert_ne!(t(vec![TupleValue::Null, text("")]), t(vec![text(""), text("")]));
        assert_eq!(t(vec![TupleValue::UnchangedToast, text("")]), None);
    }

    #[test]
    fn watermark_messages_round_trip() {
        let c = watermark_content(0xdead_beef, 42, true);
        assert_eq!(parse_watermark(&Bytes::from(c)), Some((0xdead_beef, 42, true)));
        let c = watermark_content(1, 0, false);
        assert_eq!(parse_watermark(&Bytes::from(c)), Some((1, 0, false)));
        for bad in ["", "zz:1:low", "1:1:middle", "1:1:low:x", "1:x:high"] {
            assert_eq!(parse_watermark(&Bytes::from_static(bad.as_bytes())), None, "{bad}");
        }
    }
}
