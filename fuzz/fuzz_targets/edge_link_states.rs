#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| locus_locator::fuzzing::edge_link_states(data));
