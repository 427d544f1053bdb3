//! The proleptic Gregorian calendar as Postgres counts it (astronomical
//! years, so 1 BC is year 0), between dates and days since 1970-01-01, and
//! Postgres's text forms of dates, times and timestamps. Capture parses
//! dates into Avro days with it; the sink prints cells back as text with it.

/// Infinite dates (days) and timestamps (microseconds), as DuckDB stores
/// them: what `infinity` and `-infinity` become in the warehouses.
pub const DATE_INFINITY: i32 = i32::MAX;
pub const DATE_NEG_INFINITY: i32 = -i32::MAX;
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;
pub const TIMESTAMP_NEG_INFINITY: i64 = -i64::MAX;

/// Days since 1970-01-01 in the proleptic Gregorian calendar.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian;
/// years before 1 get Postgres's ` BC` suffix).
pub fn date_text(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Microseconds since midnight as `HH:MM:SS.ffffff`.
pub fn time_text(micros: i64) -> String {
    let s = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    format!("{:02}:{:02}:{:02}.{us:06}", s / 3600, (s / 60) % 60, s % 60)
}

/// Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS.ffffff`.
pub fn timestamp_text(micros: i64) -> String {
    let day = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let date = date_text(day);
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {} BC", time_text(rest)),
        None => format!("{date} {}", time_text(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_format_like_postgres() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(19_723), "2024-01-01");
        assert_eq!(date_text(-1), "1969-12-31");
        assert_eq!(date_text(-719_163), "0001-12-31 BC");
        assert_eq!(date_text(-719_162), "0001-01-01");
        assert_eq!(time_text(3_723_000_004), "01:02:03.000004");
        assert_eq!(timestamp_text(1_700_000_000_123_456), "2023-11-14 22:13:20.123456");
        assert_eq!(timestamp_text(-1), "1969-12-31 23:59:59.999999");
    }
}
