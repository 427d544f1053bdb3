//! Rows in `COPY … FROM STDIN (FORMAT binary)`: each value in its type's
//! binary send format, so the server parses no text (numerics, timestamps
//! and UUIDs are the costly ones to parse).
//!
//! The format is Postgres's own, typed by the column the value goes to:
//! <https://www.postgresql.org/docs/current/sql-copy.html#SQL-COPY-BINARY-FORMAT>.
//! A value its column cannot hold is an [`EncodeError`] naming the column;
//! the caller sets its row aside like a value the server refuses.

use bytes::{BufMut, Bytes, BytesMut};

use crate::warehouse::{
    too_many_digits, width_mismatch, Cell, ColumnDef, SqlType, DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
};

#[derive(Debug, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct EncodeError {
    pub column: String,
    pub reason: String,
}

/// The signature, flags and header extension that open a binary COPY.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Postgres counts days and microseconds from 2000-01-01, the Unix epoch
/// plus this many.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The `jsonb` binary format's version byte, before the JSON text.
const JSONB_VERSION: u8 = 1;

/// A table's rows in the binary COPY format as they are pushed, each
/// row's start kept so a range of them can be sent (or left out) alone.
#[derive(Clone, Debug, Default)]
pub struct CopyRows {
    columns: Vec<ColumnDef>,
    buf: BytesMut,
    starts: Vec<usize>,
}

impl CopyRows {
    pub fn new(columns: &[ColumnDef]) -> Result<Self, EncodeError> {
        i16::try_from(columns.len()).map_err(|_| EncodeError {
            column: String::new(),
            reason: format!("{} columns are more than COPY takes", columns.len()),
        })?;
        Ok(CopyRows {
            columns: columns.to_vec(),
            ..CopyRows::default()
        })
    }

    /// Appends a row (a cell per column, in order), or nothing if one of
    /// its cells does not fit its column.
    pub fn push(&mut self, cells: &[Cell]) -> Result<(), EncodeError> {
        if let Some((column, reason)) = width_mismatch(&self.columns, cells) {
            return Err(EncodeError { column, reason });
        }
        let start = self.buf.len();
        // Checked in `new`.
        self.buf.put_i16(self.columns.len() as i16);
        for (column, cell) in self.columns.iter().zip(cells) {
            if let Err(e) = value(column, cell, &mut self.buf) {
                self.buf.truncate(start);
                return Err(e);
            }
        }
        self.starts.push(start);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn end_of(&self, row: usize) -> usize {
        self.starts.get(row).copied().unwrap_or(self.buf.len())
    }

    /// Rows `from..to` as one COPY stream (header, rows, trailer).
    pub fn stream(&self, from: usize, to: usize) -> Bytes {
        let rows = self.buf.get(self.end_of(from)..self.end_of(to)).unwrap_or_default();
        let mut out = BytesMut::with_capacity(HEADER.len() + rows.len() + 2);
        out.put_slice(HEADER);
        out.put_slice(rows);
        out.put_i16(-1);
        out.freeze()
    }

    /// Rows `from..to`.
    pub fn range(&self, from: usize, to: usize) -> Self {
        let mut out = CopyRows {
            columns: self.columns.clone(),
            ..CopyRows::default()
        };
        for row in from..to.min(self.len()) {
            out.starts.push(out.buf.len());
            out.buf
                .put_slice(self.buf.get(self.end_of(row)..self.end_of(row + 1)).unwrap_or_default());
        }
        out
    }

    /// Keeps the rows whose `keep` is true.
    pub fn retain(&mut self, keep: &[bool]) {
        let kept: Vec<usize> = (0..self.len())
            .filter(|i| keep.get(*i).copied().unwrap_or(true))
            .collect();
        let mut out = CopyRows {
            columns: std::mem::take(&mut self.columns),
            ..CopyRows::default()
        };
        for row in kept {
            out.starts.push(out.buf.len());
            out.buf
                .put_slice(self.buf.get(self.end_of(row)..self.end_of(row + 1)).unwrap_or_default());
        }
        *self = out;
    }
}

/// Appends one field: its length, then its bytes (length -1 for NULL).
fn value(column: &ColumnDef, cell: &Cell, out: &mut BytesMut) -> Result<(), EncodeError> {
    let error = |reason: String| EncodeError {
        column: column.name.clone(),
        reason,
    };
    match (&column.ty, cell) {
        (_, Cell::Null) => out.put_i32(-1),
        (SqlType::Boolean, Cell::Bool(b)) => {
            out.put_i32(1);
            out.put_u8(u8::from(*b));
        }
        (SqlType::Integer, Cell::Int(v)) => {
            out.put_i32(4);
            out.put_i32(*v);
        }
        (SqlType::BigInt, Cell::Long(v)) => {
            out.put_i32(8);
            out.put_i64(*v);
        }
        (SqlType::BigInt, Cell::Int(v)) => {
            out.put_i32(8);
            out.put_i64(i64::from(*v));
        }
        (SqlType::Real, Cell::Float(v)) => {
            out.put_i32(4);
            out.put_f32(*v);
        }
        (SqlType::Double, Cell::Double(v)) => {
            out.put_i32(8);
            out.put_f64(*v);
        }
        (SqlType::Double, Cell::Float(v)) => {
            out.put_i32(8);
            out.put_f64(f64::from(*v));
        }
        (SqlType::Decimal { precision, scale }, Cell::Decimal { unscaled, scale: s, .. })
            if u32::from(*s) == *scale =>
        {
            if let Some(reason) = too_many_digits(*unscaled, *precision) {
                return Err(error(reason));
            }
            numeric(*unscaled, *s, out);
        }
        (SqlType::Text, Cell::Text(s) | Cell::Uuid(s)) => bytes(s.as_bytes(), out, &error)?,
        (SqlType::Json, Cell::Text(s)) => {
            let len = i32::try_from(s.len() + 1).map_err(|_| error("a JSON value over 2 GB".into()))?;
            out.put_i32(len);
            out.put_u8(JSONB_VERSION);
            out.put_slice(s.as_bytes());
        }
        (SqlType::Uuid, Cell::Uuid(s) | Cell::Text(s)) => {
            let uuid = uuid_bytes(s).ok_or_else(|| error(format!("{s:?} is not a UUID")))?;
            out.put_i32(16);
            out.put_slice(&uuid);
        }
        (SqlType::Bytes, Cell::Bytes(b)) => bytes(b, out, &error)?,
        (SqlType::Date, Cell::Date(d)) => {
            let days = match *d {
                DATE_INFINITY => i32::MAX,
                DATE_NEG_INFINITY => i32::MIN,
                d => d
                    .checked_sub(PG_EPOCH_DAYS)
                    .ok_or_else(|| error("a date before what Postgres stores".into()))?,
            };
            out.put_i32(4);
            out.put_i32(days);
        }
        (SqlType::Time, Cell::Time(t)) => {
            out.put_i32(8);
            out.put_i64(*t);
        }
        (SqlType::Timestamp, Cell::Timestamp(t)) | (SqlType::TimestampTz, Cell::TimestampTz(t)) => {
            let micros = match *t {
                TIMESTAMP_INFINITY => i64::MAX,
                TIMESTAMP_NEG_INFINITY => i64::MIN,
                t => t
                    .checked_sub(PG_EPOCH_MICROS)
                    .ok_or_else(|| error("a timestamp before what Postgres stores".into()))?,
            };
            out.put_i32(8);
            out.put_i64(micros);
        }
        (ty, cell) => return Err(error(format!("a {} value cannot be stored as {ty:?}", cell.kind()))),
    }
    Ok(())
}

fn bytes(b: &[u8], out: &mut BytesMut, error: &dyn Fn(String) -> EncodeError) -> Result<(), EncodeError> {
    let len = i32::try_from(b.len()).map_err(|_| error("a value over 2 GB".into()))?;
    out.put_i32(len);
    out.put_slice(b);
    Ok(())
}

/// A hyphenated UUID's 16 bytes.
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    if !crate::warehouse::is_uuid(s) {
        return None;
    }
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// `unscaled × 10^-scale` in `numeric`'s binary format: base-10000 digits
/// around the decimal point, the weight of the first, the sign and the
/// display scale. By arithmetic, not text: one runs per decimal value.
fn numeric(unscaled: i128, scale: u8, out: &mut BytesMut) {
    // A decimal has at most 38 digits on either side: 10 groups each.
    const MAX_GROUPS: usize = 20;
    let ten = |n: u32| 10u128.pow(n);
    let magnitude = unscaled.unsigned_abs();
    let s = u32::from(scale).min(38);
    let (mut int, mut frac) = (magnitude / ten(s), magnitude % ten(s));
    // Least significant first, then reversed.
    let mut groups = [0i16; MAX_GROUPS];
    let mut n = 0;
    // The fraction's groups, its last one padded with zeros on the right.
    let frac_groups = s.div_ceil(4) as usize;
    let partial = s % 4;
    for i in 0..frac_groups {
        let (width, pad) = if i == 0 && partial > 0 {
            (partial, 4 - partial)
        } else {
            (4, 0)
        };
        groups[n] = ((frac % ten(width)) * ten(pad)) as i16;
        frac /= ten(width);
        n += 1;
    }
    // The integer part's groups: at least one, as for 0.
    let int_start = n;
    loop {
        groups[n] = (int % 10_000) as i16;
        int /= 10_000;
        n += 1;
        if int == 0 || n == MAX_GROUPS {
            break;
        }
    }
    let mut weight = (n - int_start) as i16 - 1;
    let digits = &mut groups[..n];
    digits.reverse();
    let leading = digits.iter().take_while(|g| **g == 0).count();
    let trailing = digits[leading..].iter().rev().take_while(|g| **g == 0).count();
    let kept = &digits[leading..n - trailing];
    weight -= leading as i16;
    if kept.is_empty() {
        weight = 0;
    }
    let negative = unscaled < 0 && !kept.is_empty();
    out.put_i32(8 + 2 * kept.len() as i32);
    out.put_i16(kept.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative { 0x4000 } else { 0 });
    out.put_u16(u16::from(scale));
    for g in kept {
        out.put_i16(*g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of one encoded numeric: (ndigits, weight, sign, dscale, digits).
    fn numeric_fields(unscaled: i128, scale: u8) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = BytesMut::new();
        numeric(unscaled, scale, &mut out);
        let b = &out[..];
        let i16_at = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        assert_eq!(len, b.len() - 4);
        let n = i16_at(4);
        let digits = (0..n as usize).map(|k| i16_at(12 + 2 * k)).collect();
        (n, i16_at(6), i16_at(8) as u16, i16_at(10) as u16, digits)
    }

    /// The text-based encoding numeric() replaced, kept as its oracle.
    fn numeric_by_text(unscaled: i128, scale: u8, out: &mut BytesMut) {
        let scale = usize::from(scale);
        let text = unscaled.unsigned_abs().to_string();
        // Enough leading zeros that the integer part is not empty.
        let padded = format!("{}{text}", "0".repeat((scale + 1).saturating_sub(text.len())));
        let (int, frac) = padded.split_at(padded.len() - scale);
        // Groups of four decimal digits, aligned on the decimal point.
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let group = |g: &[u8]| g.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
        let mut groups: Vec<i16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac.as_bytes().chunks(4))
            .map(group)
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        let leading = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..leading);
        weight -= leading as i16;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let negative = unscaled < 0 && !groups.is_empty();
        out.put_i32(8 + 2 * groups.len() as i32);
        out.put_i16(groups.len() as i16);
        out.put_i16(weight);
        out.put_u16(if negative { 0x4000 } else { 0 });
        out.put_u16(scale as u16);
        for g in groups {
            out.put_i16(g);
        }
    }

    #[test]
    fn numerics_match_the_text_based_encoding() {
        let mut values: Vec<i128> = vec![0, 1, -1, 9_999, 10_000, -10_001, i64::MAX as i128, 10i128.pow(38) - 1];
        let mut x: i128 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2_000 {
            // xorshift over i128, cut to at most 38 digits
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x % 10i128.pow(38 - (x.unsigned_abs() % 38) as u32));
        }
        for v in values {
            for scale in [0u8, 1, 2, 3, 4, 5, 7, 8, 10, 19, 37, 38] {
                let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                numeric(v, scale, &mut a);
                numeric_by_text(v, scale, &mut b);
                assert_eq!(a, b, "{v} at scale {scale}");
            }
        }
    }

    #[test]
    fn numerics_are_base_10000_digits_around_the_point() {
        // 12345.6789: 1 2345 . 6789
        assert_eq!(numeric_fields(123_456_789, 4), (3, 1, 0, 4, vec![1, 2345, 6789]));
        // -0.05 at scale 2: . 0500
        assert_eq!(numeric_fields(-5, 2), (1, -1, 0x4000, 2, vec![500]));
        // 0.00001 at scale 5: . 0000 1000
        assert_eq!(numeric_fields(1, 5), (1, -2, 0, 5, vec![1000]));
        // 10000 at scale 0: 1 0000, the trailing zero group dropped
        assert_eq!(numeric_fields(10_000, 0), (1, 1, 0, 0, vec![1]));
        // 0 keeps its display scale, and is never negative.
        assert_eq!(numeric_fields(0, 3), (0, 0, 0, 3, vec![]));
        // 38 nines at scale 10, the widest decimal: 28 digits before the
        // point (7 groups), 10 after (3 groups, the last padded).
        let max = 10i128.pow(38) - 1;
        let (n, weight, _, _, d) = numeric_fields(max, 10);
        assert_eq!((n, weight), (10, 6));
        assert_eq!((d.first(), d.last()), (Some(&9999), Some(&9900)));
    }

    #[test]
    fn uuids_are_their_sixteen_bytes() {
        let u = uuid_bytes("a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a").expect("uuid");
        assert_eq!(u[0], 0xa7);
        assert_eq!(u[15], 0x5a);
        assert!(uuid_bytes("a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5").is_none());
        assert!(uuid_bytes("a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4bzz").is_none());
        assert!(uuid_bytes("a7e4d0c35b2f4c8e9a610f3e2d1c4b5a----").is_none());
    }

    #[test]
    fn values_their_column_cannot_hold_name_it() {
        let col = ColumnDef::new("n", SqlType::Decimal { precision: 5, scale: 2 });
        let wide = Cell::Decimal {
            unscaled: 123_456,
            precision: 5,
            scale: 2,
        };
        let mut rows = CopyRows::new(&[col.clone(), ColumnDef::new("t", SqlType::Integer)]).expect("columns");
        rows.push(&[Cell::Null, Cell::Int(1)]).expect("fits");
        let one = rows.stream(0, 1);
        let e = rows.push(&[wide, Cell::Int(2)]).expect_err("too wide");
        assert_eq!(e.column, "n");
        assert!(rows.push(&[Cell::Null, Cell::Text("1".into())]).is_err());
        assert!(rows.push(&[Cell::Null]).is_err());
        // Refused rows left nothing behind.
        assert_eq!((rows.len(), rows.stream(0, 1)), (1, one));
    }

    #[test]
    fn ranges_and_retains_keep_whole_rows() {
        let col = ColumnDef::new("n", SqlType::BigInt);
        let mut rows = CopyRows::new(std::slice::from_ref(&col)).expect("columns");
        for i in 0..4 {
            rows.push(&[Cell::Long(i)]).expect("row");
        }
        let only = |i: i64| {
            let mut r = CopyRows::new(std::slice::from_ref(&col)).expect("columns");
            r.push(&[Cell::Long(i)]).expect("row");
            r.stream(0, 1)
        };
        assert_eq!(rows.range(2, 3).stream(0, 1), only(2));
        assert_eq!(rows.stream(3, 4), only(3));
        rows.retain(&[false, true, false, false]);
        assert_eq!((rows.len(), rows.stream(0, 1)), (1, only(1)));
    }
}
