#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgrelay_fuzz::config::run(data));
