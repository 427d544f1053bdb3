//! The insolvency CSV reader (RFC 4180) on arbitrary file text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = walhouse::sink::insolvency::inspect(text);
    }
});
