//! Company events (JSON from a Kafka topic) into row cells or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walhouse::sink::companies::parse(data);
});
