//! The snapshot's COPY text-format row parser: the first byte picks the
//! column count, the rest is the line.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walhouse::postgres::snapshot::parse_copy_row;

fuzz_target!(|data: &[u8]| {
    let Some((&n, line)) = data.split_first() else { return };
    let _ = parse_copy_row(&Bytes::copy_from_slice(line), usize::from(n % 32));
});
