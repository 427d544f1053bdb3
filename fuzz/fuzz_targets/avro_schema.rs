//! The sink's Avro decoder on arbitrary writer schemas (what a registry
//! can hold) and bodies: the input is the schema text, a NUL byte, then
//! the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhouse::sink::envelope::EnvelopePlan;

fuzz_target!(|data: &[u8]| {
    let (schema, body) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(schema) = std::str::from_utf8(schema) else { return };
    if let Ok(plan) = EnvelopePlan::compile(schema) {
        let _ = plan.column_defs();
        let _ = plan.decode(body);
    }
});
