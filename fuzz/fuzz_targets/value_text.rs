//! A value's text under every builtin type, as each format encodes it and
//! as the sink reads text back: the first byte picks the type, the next
//! two its typmod (in the forms Postgres sends), the rest is the text. Built with overflow checks
//! (`fuzz/run.sh` passes `--debug-assertions`), so a wrapping parse is a
//! finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhouse::capture::format::debezium::{connect_type, encode_value};
use walhouse::avro::types::{column_type, NumericMode};
use walhouse::avro::value::{date_from_text, encode_text, iso_timestamp_micros, time_from_text, timestamp_from_text};
use walhouse::postgres::catalog::TypeInfo;

const OIDS: [u32; 55] = [
    16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142, 600, 650, 700, 701, 718, 774, 790, 829, 869, 1000, 1001, 1005, 1007,
    1009, 1015, 1016, 1021, 1022, 1042, 1043, 1082, 1083, 1114, 1115, 1182, 1184, 1185, 1186, 1231, 1266, 1560, 1562,
    1700, 2950, 2951, 3614, 3802, 3807, 3904, 3926, 3906, 3908, 3910, 3912,
];

fuzz_target!(|data: &[u8]| {
    let [pick, m1, m2, rest @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let oid = OIDS[usize::from(*pick) % OIDS.len()];
    // Typmods as Postgres forms them (a numeric's precision is at most
    // 1000; a random 16-bit one would be a scale of thousands of digits
    // that no server sends, and spend the run on it).
    let typmod = match m1 % 4 {
        0 => -1,
        1 => i32::from(*m2) + 4,                                         // varchar(n), bit(n)
        2 => (((i32::from(*m2) % 40 + 1) << 16) | (i32::from(*m2) % 20)) + 4, // numeric(p,s)
        _ => i32::from(m2 % 7),                                          // time(p), timestamp(p)
    };
    let lookup = |_: u32| -> Option<&TypeInfo> { None };
    let mut out = Vec::new();
    for mode in [NumericMode::Decimal, NumericMode::String] {
        out.clear();
        let _ = encode_text(&column_type(oid, typmod, 0, mode, &lookup), text, &mut out);
    }
    out.clear();
    let _ = encode_value(&connect_type(oid, typmod, &lookup), typmod, text, &mut out);
    let _ = iso_timestamp_micros(text);
    let _ = date_from_text(text);
    let _ = time_from_text(text);
    let _ = timestamp_from_text(text, true);
    let _ = timestamp_from_text(text, false);
});
