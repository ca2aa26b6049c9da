#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| locus_protocol::fuzzing::edge_link_messages(data));
