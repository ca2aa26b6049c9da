#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| locus_geo::fuzzing::regions_yaml(data));
