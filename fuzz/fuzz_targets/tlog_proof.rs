#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_lab::fuzz::tlog_proof(data));
