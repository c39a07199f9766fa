#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_lab::fuzz::charter_text(data));
