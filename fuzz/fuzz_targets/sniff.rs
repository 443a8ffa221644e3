#![no_main]
//! See `tagger::fuzzing::sniff`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagger::fuzzing::sniff(data));
