//! The pgoutput decoder on arbitrary messages: the input is a sequence of
//! messages, each a length byte then that many bytes, decoded in order by
//! one decoder (streamed-transaction state carries over).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walhouse::postgres::pgoutput::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let _ = decoder.decode(Bytes::copy_from_slice(&tail[..n]));
        rest = &tail[n..];
    }
});
