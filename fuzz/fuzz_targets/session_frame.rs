#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| locus_edge::fuzzing::session_frame(data));
