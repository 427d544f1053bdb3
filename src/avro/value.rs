//! Postgres text output to Avro binary, exactly.
//!
//! pgoutput sends values in their text form. The replication connection
//! fixes the settings that shape that text (`DateStyle=ISO`,
//! `TimeZone=UTC`, `IntervalStyle=iso_8601`, `extra_float_digits=3`,
//! `bytea_output=hex`), so parsing here is exact: numerics go digit by digit
//! into two's-complement decimals (no float round trip), timestamps are
//! read with their offset (no time-zone drift), floats keep NaN and
//! infinities (IEEE has them).
//!
//! A value the Avro type cannot hold (`NaN` in a decimal, `infinity` in a
//! date or timestamp, an array deeper than declared) is not an error of
//! the data: [`ValueError::Unrepresentable`] tells the envelope to send
//! null in the typed field and the exact text beside it.

use super::types::ColumnType;
use crate::calendar;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("{text:?} has no {avro} form")]
    Unrepresentable { text: String, avro: &'static str },
    #[error("cannot parse {text:?} as {avro}")]
    Malformed { text: String, avro: &'static str },
}

fn malformed(text: &str, avro: &'static str) -> ValueError {
    ValueError::Malformed {
        text: text.into(),
        avro,
    }
}

fn unrepresentable(text: &str, avro: &'static str) -> ValueError {
    ValueError::Unrepresentable {
        text: text.into(),
        avro,
    }
}

/// Avro's zig-zag varint `long` (also used for `int`, lengths, counts, union indexes).
pub fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Encodes one non-null value of `ty` from its Postgres text form.
/// On error nothing useful is in `out`: the caller truncates it.
pub fn encode_text(ty: &ColumnType, text: &str, out: &mut Vec<u8>) -> Result<(), ValueError> {
    match ty {
        ColumnType::Int => put_long(out, text.parse::<i32>().map_err(|_| malformed(text, "int"))?.into()),
        ColumnType::Long => put_long(out, text.parse::<i64>().map_err(|_| malformed(text, "long"))?),
        ColumnType::Float => out.extend_from_slice(&parse_float::<f32>(text)?.to_le_bytes()),
        ColumnType::Double => out.extend_from_slice(&parse_float::<f64>(text)?.to_le_bytes()),
        ColumnType::Boolean => out.push(match text {
            "t" | "true" => 1,
            "f" | "false" => 0,
            _ => return Err(malformed(text, "boolean")),
        }),
        ColumnType::Decimal { scale, .. } => put_bytes(out, &decimal_unscaled(text, *scale)?),
        ColumnType::Bytes => put_bytes(out, &bytea(text)?),
        ColumnType::Date => put_long(out, readable(date_days(text)?.into(), CLIENT_DAYS, text, "date")?),
        ColumnType::TimeMicros => put_long(out, readable(time_micros(text)?, CLIENT_TIME, text, "time-micros")?),
        ColumnType::LocalTimestampMicros => put_long(
            out,
            readable(
                timestamp_micros(text, false)?,
                CLIENT_MICROS,
                text,
                "local-timestamp-micros",
            )?,
        ),
        ColumnType::TimestampMicros => put_long(
            out,
            readable(timestamp_micros(text, true)?, CLIENT_MICROS, text, "timestamp-micros")?,
        ),
        ColumnType::Array { element, dims } => {
            let node = parse_array(text)?;
            encode_array(element, *dims, &node, text, out)?;
        }
        ColumnType::NumericText
        | ColumnType::String
        | ColumnType::Interval
        | ColumnType::Uuid
        | ColumnType::Json
        | ColumnType::Enum(_)
        | ColumnType::Text(_) => put_str(out, text),
    }
    Ok(())
}

pub(crate) fn parse_float<F: std::str::FromStr>(text: &str) -> Result<F, ValueError> {
    // Rust reads "NaN", "Infinity" and "-Infinity" as Postgres prints them.
    text.parse::<F>().map_err(|_| malformed(text, "float"))
}

/// The unscaled integer of a decimal text with exactly `scale` fraction
/// digits, as minimal big-endian two's complement (Avro's decimal bytes).
pub fn decimal_unscaled(text: &str, scale: u32) -> Result<Vec<u8>, ValueError> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Err(unrepresentable(text, "decimal"));
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    let scale = scale as usize;
    if frac_part.len() > scale
        || int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(malformed(text, "decimal"));
    }
    // Digits of the unscaled value, most significant first.
    let mut digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).map(|b| b - b'0').collect();
    digits.extend(std::iter::repeat_n(0, scale - frac_part.len()));
    let magnitude = digits_to_bytes(&digits);
    Ok(twos_complement(magnitude, negative))
}

/// Base-10 digits to big-endian base-256 magnitude.
fn digits_to_bytes(digits: &[u8]) -> Vec<u8> {
    // Fast path: up to 38 digits fit an i128 (numeric(19,4) is the common case).
    if digits.len() <= 38 {
        let v = digits.iter().fold(0u128, |acc, d| acc * 10 + u128::from(*d));
        let bytes = v.to_be_bytes();
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        return bytes[first..].to_vec();
    }
    let mut num: Vec<u8> = digits.to_vec();
    let mut out = Vec::new();
    while num.iter().any(|&d| d != 0) {
        let mut rem = 0u32;
        for d in num.iter_mut() {
            let cur = rem * 10 + u32::from(*d);
            *d = (cur / 256) as u8;
            rem = cur % 256;
        }
        out.push(rem as u8);
        let lead = num.iter().position(|&d| d != 0).unwrap_or(num.len());
        num.drain(..lead);
    }
    out.reverse();
    out
}

fn twos_complement(mut magnitude: Vec<u8>, negative: bool) -> Vec<u8> {
    if magnitude.is_empty() {
        return vec![0];
    }
    if magnitude[0] & 0x80 != 0 {
        magnitude.insert(0, 0);
    }
    if negative {
        for b in magnitude.iter_mut() {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        // Drop a redundant leading 0xFF (minimal encoding).
        while magnitude.len() > 1 && magnitude[0] == 0xFF && magnitude[1] & 0x80 != 0 {
            magnitude.remove(0);
        }
    }
    magnitude
}

pub(crate) fn bytea(text: &str) -> Result<Vec<u8>, ValueError> {
    let hex = text.strip_prefix("\\x").ok_or_else(|| malformed(text, "bytes"))?;
    if hex.len() % 2 != 0 {
        return Err(malformed(text, "bytes"));
    }
    // By bytes: text that is not ASCII has no char boundary every two bytes.
    let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(|| malformed(text, "bytes"));
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// Splits a trailing " BC" (Postgres's era marker) off.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` (4+ digit years) → (astronomical year, month, day).
fn parse_ymd(s: &str, bc: bool, whole: &str) -> Result<(i64, u32, u32), ValueError> {
    let mut parts = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed(whole, "date"));
    };
    let num = |p: &str| p.parse::<u32>().map_err(|_| malformed(whole, "date"));
    let (year, month, day) = (i64::from(num(y)?), num(m)?, num(d)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(malformed(whole, "date"));
    }
    // 1 BC is astronomical year 0.
    Ok((if bc { 1 - year } else { year }, month, day))
}

// What mainstream Avro libraries (Java's, fastavro under Confluent's
// Python client, …) turn into their date and time types: years 1 to 9999,
// times before 24:00. A logical-typed value outside makes the whole record
// unreadable to them, so it goes as null plus its exact text instead.
/// 0001-01-01 to 9999-12-31, in days since 1970-01-01.
const CLIENT_DAYS: std::ops::RangeInclusive<i64> = -719_162..=2_932_896;
/// 0001-01-01 00:00 to 9999-12-31 23:59:59.999999, in microseconds since 1970.
const CLIENT_MICROS: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;
/// 00:00 to 23:59:59.999999 (Postgres also has 24:00:00).
const CLIENT_TIME: std::ops::RangeInclusive<i64> = 0..=86_399_999_999;

fn readable(v: i64, range: std::ops::RangeInclusive<i64>, text: &str, avro: &'static str) -> Result<i64, ValueError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(unrepresentable(text, avro))
    }
}

pub(crate) fn date_days(text: &str) -> Result<i32, ValueError> {
    if matches!(text, "infinity" | "-infinity") {
        return Err(unrepresentable(text, "date"));
    }
    let (s, bc) = strip_bc(text);
    let (y, m, d) = parse_ymd(s, bc, text)?;
    i32::try_from(calendar::days_from_civil(y, m, d)).map_err(|_| malformed(text, "date"))
}

/// `HH:MM:SS[.ffffff]` → microseconds (24:00:00 is valid in Postgres).
pub(crate) fn time_micros(text: &str) -> Result<i64, ValueError> {
    let err = || malformed(text, "time");
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut p = hms.splitn(3, ':');
    let (Some(h), Some(m), Some(s)) = (p.next(), p.next(), p.next()) else {
        return Err(err());
    };
    // Digits only (no sign), and arithmetic that cannot wrap: the text may
    // come from a Kafka record rather than from Postgres.
    let n = |x: &str| digits(x).ok_or_else(err);
    let micros = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 {
            return Err(err());
        }
        n(frac)? * 10i64.pow(6 - frac.len() as u32)
    };
    n(h)?
        .checked_mul(60)
        .and_then(|v| v.checked_add(n(m).ok()?))
        .and_then(|v| v.checked_mul(60))
        .and_then(|v| v.checked_add(n(s).ok()?))
        .and_then(|v| v.checked_mul(1_000_000))
        .and_then(|v| v.checked_add(micros))
        .ok_or_else(err)
}

/// A non-empty run of ASCII digits as a number (`None` past `i64`).
fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]` → microseconds since the
/// Unix epoch (UTC when `with_zone`, wall-clock otherwise).
pub(crate) fn timestamp_micros(text: &str, with_zone: bool) -> Result<i64, ValueError> {
    let avro = if with_zone {
        "timestamp-micros"
    } else {
        "local-timestamp-micros"
    };
    if matches!(text, "infinity" | "-infinity") {
        return Err(unrepresentable(text, avro));
    }
    let err = || malformed(text, avro);
    let (s, bc) = strip_bc(text);
    let (date, rest) = s.split_once(' ').ok_or_else(err)?;
    let (y, m, d) = parse_ymd(date, bc, text).map_err(|_| err())?;
    let (time, offset_secs) = if with_zone {
        split_offset(rest).ok_or_else(err)?
    } else {
        (rest, 0)
    };
    let days = calendar::days_from_civil(y, m, d);
    let time = time_micros(time).map_err(|_| err())?;
    let micros = days
        .checked_mul(86_400_000_000)
        .and_then(|v| v.checked_add(time))
        .and_then(|v| v.checked_sub(offset_secs.checked_mul(1_000_000)?))
        // Postgres reaches 294276 AD; Avro's i64 microseconds since 1970 stop in 294247.
        .ok_or_else(|| unrepresentable(text, avro))?;
    Ok(micros)
}

/// Splits a UTC offset (`+05:30`, `-08`, `+00:00:30`) off the end of a
/// time: (the time, the offset in seconds east of UTC).
pub(crate) fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.rfind(['+', '-'])?;
    let (time, off) = text.split_at(at);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut secs = 0i64;
    for (i, part) in off[1..].split(':').enumerate() {
        secs = secs.checked_add(digits(part)?.checked_mul(*[3600, 60, 1].get(i)?)?)?;
    }
    Some((time, sign * secs))
}

/// An ISO-8601 date or timestamp as written in files (`2024-05-01`,
/// `2024-05-01T10:00:00Z`, `2024-05-01 10:00:00.5+02:00`) → microseconds
/// since the epoch, UTC; a date is its midnight UTC, no zone means UTC.
pub fn iso_timestamp_micros(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.len() == 10 {
        return date_days(t).ok().and_then(|d| i64::from(d).checked_mul(86_400_000_000));
    }
    let mut s = t.replacen('T', " ", 1);
    if let Some(stripped) = s.strip_suffix('Z') {
        s = format!("{stripped}+00");
    }
    let time_part = s.split_once(' ').map_or("", |(_, r)| r);
    if !time_part.contains(['+', '-']) {
        s.push_str("+00");
    }
    timestamp_micros(&s, true).ok()
}

/// Days since 1970 of a date's exact Postgres text, `±infinity` as the
/// warehouses' own infinities.
pub fn date_from_text(text: &str) -> Option<i32> {
    match text {
        "infinity" => Some(crate::calendar::DATE_INFINITY),
        "-infinity" => Some(crate::calendar::DATE_NEG_INFINITY),
        _ => date_days(text).ok(),
    }
}

/// Microseconds since midnight of a time's exact text (`24:00:00` too).
pub fn time_from_text(text: &str) -> Option<i64> {
    time_micros(text).ok()
}

/// Microseconds since 1970 of a timestamp's exact text, `±infinity` as
/// the warehouses' own infinities.
pub fn timestamp_from_text(text: &str, with_zone: bool) -> Option<i64> {
    match text {
        "infinity" => Some(crate::calendar::TIMESTAMP_INFINITY),
        "-infinity" => Some(crate::calendar::TIMESTAMP_NEG_INFINITY),
        _ => timestamp_micros(text, with_zone).ok(),
    }
}

/// A parsed Postgres array literal.
#[derive(Debug, PartialEq, Eq)]
pub enum ArrayNode {
    Null,
    Elem(String),
    List(Vec<ArrayNode>),
}

/// Parses `{1,NULL,"a \"b\""}`, nested `{{1,2},{3,4}}`, and the
/// `[lo:hi]={…}` form of arrays with explicit bounds.
pub fn parse_array(text: &str) -> Result<ArrayNode, ValueError> {
    let body = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let bytes = body.as_bytes();
    let mut pos = 0;
    let node = parse_list(bytes, &mut pos, text, 0)?;
    if pos != bytes.len() {
        return Err(malformed(text, "array"));
    }
    Ok(node)
}

fn parse_list(b: &[u8], pos: &mut usize, whole: &str, depth: u32) -> Result<ArrayNode, ValueError> {
    let err = || malformed(whole, "array");
    if depth > 6 || b.get(*pos) != Some(&b'{') {
        return Err(err());
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Ok(ArrayNode::List(items));
    }
    loop {
        match b.get(*pos) {
            Some(b'{') => items.push(parse_list(b, pos, whole, depth + 1)?),
            Some(b'"') => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(*pos) {
                        Some(b'\\') => {
                            s.push(*b.get(*pos + 1).ok_or_else(err)?);
                            *pos += 2;
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            *pos += 1;
                        }
                        None => return Err(err()),
                    }
                }
                items.push(ArrayNode::Elem(String::from_utf8(s).map_err(|_| err())?));
            }
            Some(_) => {
                let start = *pos;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    *pos += 1;
                }
                let raw = std::str::from_utf8(&b[start..*pos]).map_err(|_| err())?;
                items.push(if raw == "NULL" {
                    ArrayNode::Null
                } else {
                    ArrayNode::Elem(raw.to_owned())
                });
            }
            None => return Err(err()),
        }
        match b.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                return Ok(ArrayNode::List(items));
            }
            _ => return Err(err()),
        }
    }
}

fn encode_array(
    element: &ColumnType,
    dims: u32,
    node: &ArrayNode,
    whole: &str,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    let ArrayNode::List(items) = node else {
        return Err(unrepresentable(whole, "array of the declared dimensions"));
    };
    if !items.is_empty() {
        put_long(out, items.len() as i64);
        for item in items {
            match (item, dims) {
                (ArrayNode::Null, _) => put_long(out, 0),
                (ArrayNode::Elem(text), 1) => {
                    put_long(out, 1);
                    encode_text(element, text, out)?;
                }
                (ArrayNode::List(_), d) if d > 1 => {
                    put_long(out, 1);
                    encode_array(element, d - 1, item, whole, out)?;
                }
                _ => return Err(unrepresentable(whole, "array of the declared dimensions")),
            }
        }
    }
    put_long(out, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    #[test]
    fn iso_dates_and_timestamps_from_files() {
        assert_eq!(iso_timestamp_micros("1970-01-02"), Some(86_400_000_000));
        assert_eq!(iso_timestamp_micros("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(iso_timestamp_micros("1970-01-01 01:00:00+01:00"), Some(0));
        assert_eq!(iso_timestamp_micros("1970-01-01T00:00:00.5"), Some(500_000));
        assert_eq!(iso_timestamp_micros("yesterday"), None);
        assert_eq!(iso_timestamp_micros("2024-13-01"), None);
        // Out of range, not wrapped.
        assert_eq!(iso_timestamp_micros("9999999-01-01"), None);
        assert_eq!(iso_timestamp_micros("1970-01-01 00:00:00+99999999999999999"), None);
        assert_eq!(iso_timestamp_micros("1970-01-01 9999999999999:00:00+00"), None);
    }

    fn decode(ty: &ColumnType, bytes: &[u8]) -> Value {
        crate::avro::read_datum(&ty.schema(), bytes)
    }

    fn enc(ty: &ColumnType, text: &str) -> Value {
        let mut out = Vec::new();
        encode_text(ty, text, &mut out).unwrap_or_else(|e| panic!("{text}: {e}"));
        decode(ty, &out)
    }

    #[test]
    fn integers_floats_booleans() {
        assert_eq!(enc(&ColumnType::Int, "-2147483648"), Value::Int(i32::MIN));
        assert_eq!(enc(&ColumnType::Long, "9223372036854775807"), Value::Long(i64::MAX));
        assert_eq!(
            enc(&ColumnType::Double, "-1.7976931348623157e+308"),
            Value::Double(-f64::MAX)
        );
        assert_eq!(enc(&ColumnType::Float, "1.5e-07"), Value::Float(1.5e-7));
        assert!(matches!(enc(&ColumnType::Double, "NaN"), Value::Double(v) if v.is_nan()));
        assert_eq!(enc(&ColumnType::Double, "-Infinity"), Value::Double(f64::NEG_INFINITY));
        assert_eq!(enc(&ColumnType::Boolean, "t"), Value::Boolean(true));
        assert!(encode_text(&ColumnType::Int, "2147483648", &mut Vec::new()).is_err());
    }

    #[test]
    fn decimals_are_exact() {
        let d = |text: &str, scale| {
            let bytes = decimal_unscaled(text, scale).expect("decimal");
            let mut v = 0i128;
            for (i, b) in bytes.iter().enumerate() {
                v = if i == 0 { (*b as i8).into() } else { v };
                if i > 0 {
                    v = (v << 8) | i128::from(*b);
                }
            }
            v
        };
        assert_eq!(d("123456789012345.6789", 4), 1234567890123456789);
        assert_eq!(d("-0.0001", 4), -1);
        assert_eq!(d("0.0000", 4), 0);
        assert_eq!(d("-128", 0), -128);
        assert_eq!(decimal_unscaled("-128", 0).expect("ok"), vec![0x80]);
        assert_eq!(decimal_unscaled("128", 0).expect("ok"), vec![0x00, 0x80]);
        assert_eq!(decimal_unscaled("-129", 0).expect("ok"), vec![0xFF, 0x7F]);
        assert_eq!(d("12.5", 3), 12500, "fewer digits than the scale are padded");
        let max38 = "9".repeat(38);
        assert_eq!(d(&max38, 0), 10i128.pow(38) - 1);
        assert_eq!(
            d(&format!("-{}.{}", "9".repeat(28), "9".repeat(10)), 10),
            -(10i128.pow(38) - 1)
        );
        assert!(matches!(
            decimal_unscaled("NaN", 2),
            Err(ValueError::Unrepresentable { .. })
        ));
        assert!(matches!(
            decimal_unscaled("1.234", 2),
            Err(ValueError::Malformed { .. })
        ));
        assert!(matches!(decimal_unscaled("1e5", 0), Err(ValueError::Malformed { .. })));
    }

    #[test]
    fn wide_decimals_match_the_narrow_path() {
        // 60 digits go through the long-division path; compare its low
        // 16 bytes with i128 arithmetic on the value modulo 2^128.
        let text = format!("{}{}", "1".repeat(30), "7".repeat(30));
        let bytes = decimal_unscaled(&text, 0).expect("wide");
        let low = u128::from_be_bytes(bytes[bytes.len() - 16..].try_into().expect("16 bytes"));
        let expected = text
            .bytes()
            .fold(0u128, |acc, b| acc.wrapping_mul(10).wrapping_add(u128::from(b - b'0')));
        assert_eq!(low, expected);
        assert_eq!(bytes[0] & 0x80, 0, "positive");
        let schema = ColumnType::Decimal {
            precision: 60,
            scale: 0,
        };
        let Value::Decimal(dec) = enc(&schema, &text) else {
            panic!("decimal")
        };
        assert_eq!(Vec::<u8>::try_from(dec).expect("bytes"), bytes);
    }

    #[test]
    fn dates_times_and_timestamps() {
        assert_eq!(enc(&ColumnType::Date, "1970-01-01"), Value::Date(0));
        assert_eq!(enc(&ColumnType::Date, "1969-07-20"), Value::Date(-165));
        assert_eq!(enc(&ColumnType::Date, "2000-03-01"), Value::Date(11017));
        // 1 BC is year 0, a leap year: 0001-01-01 BC is 366 days before 0001-01-01.
        let Value::Date(ad1) = enc(&ColumnType::Date, "0001-01-01") else {
            panic!()
        };
        assert_eq!(ad1, -719_162);
        assert!(matches!(
            encode_text(&ColumnType::Date, "0001-12-31 BC", &mut Vec::new()),
            Err(ValueError::Unrepresentable { .. })
        ));
        assert!(matches!(
            encode_text(&ColumnType::Date, "10000-01-01", &mut Vec::new()),
            Err(ValueError::Unrepresentable { .. })
        ));
        assert_eq!(date_days("0001-01-01 BC"), Ok(ad1 - 366));
        assert_eq!(
            enc(&ColumnType::TimeMicros, "23:59:59.999999"),
            Value::TimeMicros(86_399_999_999)
        );
        assert_eq!(time_micros("24:00:00"), Ok(86_400_000_000));
        // Found by fuzz/value_text: a multi-byte character where a hex pair
        // is expected panicked on a char boundary.
        assert!(bytea("\\x1\u{4bf}2").is_err());
        assert_eq!(bytea("\\x00fF"), Ok(vec![0, 255]));
        assert!(bytea("\\x+1").is_err());
        // Untrusted text: no wrap, no sign.
        assert!(time_micros("9223372036854775807:00:00").is_err());
        assert!(time_micros("3000000000000:00:00").is_err());
        assert!(time_micros("-1:00:00").is_err());
        assert!(time_micros("+1:00:00").is_err());
        assert_eq!(split_offset("10:00:00+99999999999999999:00"), None);
        assert_eq!(split_offset("10:00:00+5x"), None);
        assert_eq!(split_offset("10:00:00+05:30"), Some(("10:00:00", 19_800)));
        assert!(matches!(
            encode_text(&ColumnType::TimeMicros, "24:00:00", &mut Vec::new()),
            Err(ValueError::Unrepresentable { .. })
        ));
        assert_eq!(
            enc(&ColumnType::TimestampMicros, "2024-01-31 13:45:00.5+00"),
            Value::TimestampMicros(1_706_708_700_500_000)
        );
        assert_eq!(
            enc(&ColumnType::TimestampMicros, "2024-01-31 19:15:00.5+05:30"),
            Value::TimestampMicros(1_706_708_700_500_000),
            "offsets are applied, not dropped"
        );
        assert_eq!(
            enc(&ColumnType::LocalTimestampMicros, "1900-01-01 00:00:00"),
            Value::LocalTimestampMicros(-2_208_988_800_000_000)
        );
        assert_eq!(
            enc(&ColumnType::TimestampMicros, "9999-12-31 23:59:59.999999+00"),
            Value::TimestampMicros(253_402_300_799_999_999)
        );
        assert_eq!(
            timestamp_micros("4713-01-01 00:00:00 BC", false),
            // Proleptic Gregorian, as Postgres: Julian Day 38, 2,440,550 days before 1970.
            Ok(-2_440_550 * 86_400_000_000)
        );
        for (ty, text) in [
            (ColumnType::LocalTimestampMicros, "4713-01-01 00:00:00 BC"),
            (ColumnType::TimestampMicros, "0001-01-01 00:00:00+00 BC"),
            (ColumnType::TimestampMicros, "10000-01-01 00:00:00+00"),
        ] {
            assert!(matches!(
                encode_text(&ty, text, &mut Vec::new()),
                Err(ValueError::Unrepresentable { .. })
            ));
        }
        assert_eq!(
            enc(&ColumnType::TimestampMicros, "0001-01-01 00:00:00+00"),
            Value::TimestampMicros(-62_135_596_800_000_000)
        );
        assert!(matches!(
            encode_text(
                &ColumnType::TimestampMicros,
                "294276-12-31 23:59:59.999999+00",
                &mut Vec::new()
            ),
            Err(ValueError::Unrepresentable { .. })
        ));
        for inf in ["infinity", "-infinity"] {
            assert!(matches!(
                encode_text(&ColumnType::TimestampMicros, inf, &mut Vec::new()),
                Err(ValueError::Unrepresentable { .. })
            ));
            assert!(matches!(
                encode_text(&ColumnType::Date, inf, &mut Vec::new()),
                Err(ValueError::Unrepresentable { .. })
            ));
        }
    }

    #[test]
    fn bytes_and_strings() {
        assert_eq!(enc(&ColumnType::Bytes, "\\x00ff10"), Value::Bytes(vec![0, 255, 16]));
        assert_eq!(enc(&ColumnType::String, "héllo ✓"), Value::String("héllo ✓".into()));
        assert_eq!(
            enc(&ColumnType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().expect("uuid"))
        );
    }

    #[test]
    fn arrays_nested_with_nulls() {
        assert_eq!(
            parse_array("{1,NULL,\"a \\\"b\\\"\",\"NULL\"}").expect("array"),
            ArrayNode::List(vec![
                ArrayNode::Elem("1".into()),
                ArrayNode::Null,
                ArrayNode::Elem("a \"b\"".into()),
                ArrayNode::Elem("NULL".into()),
            ])
        );
        let two = ColumnType::Array {
            element: Box::new(ColumnType::Int),
            dims: 2,
        };
        let v = enc(&two, "{{1,NULL},{3,4}}");
        let row = |a: Option<i32>, b: Option<i32>| {
            let item = |x: Option<i32>| match x {
                Some(v) => Value::Union(1, Box::new(Value::Int(v))),
                None => Value::Union(0, Box::new(Value::Null)),
            };
            Value::Union(1, Box::new(Value::Array(vec![item(a), item(b)])))
        };
        assert_eq!(v, Value::Array(vec![row(Some(1), None), row(Some(3), Some(4))]));
        assert_eq!(enc(&two, "{}"), Value::Array(vec![]));
        assert_eq!(
            enc(
                &ColumnType::Array {
                    element: Box::new(ColumnType::Int),
                    dims: 1
                },
                "[0:1]={5,6}"
            ),
            Value::Array(vec![
                Value::Union(1, Box::new(Value::Int(5))),
                Value::Union(1, Box::new(Value::Int(6)))
            ])
        );
        let one = ColumnType::Array {
            element: Box::new(ColumnType::Int),
            dims: 1,
        };
        assert!(matches!(
            encode_text(&one, "{{1},{2}}", &mut Vec::new()),
            Err(ValueError::Unrepresentable { .. })
        ));
        for bad in ["{", "{1,", "{\"x}", "1,2", "{1}}"] {
            assert!(parse_array(bad).is_err(), "{bad}");
        }
    }
}
