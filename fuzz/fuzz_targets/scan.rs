#![no_main]
//! See `tagger::fuzzing::scan`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagger::fuzzing::scan(data));
