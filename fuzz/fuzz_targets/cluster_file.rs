#![no_main]
//! See `tagger::fuzzing::cluster_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagger::fuzzing::cluster_file(data));
