#![no_main]
//! See `tagger::fuzzing::rules`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagger::fuzzing::rules(data));
