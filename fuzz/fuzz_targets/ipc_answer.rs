#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_lab::fuzz::ipc_answer(data));
