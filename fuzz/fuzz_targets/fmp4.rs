//! The fMP4 box splitter and the init and moof parsers (the bench and the tests read server output with
//! them; the server reads its own muxer's): any bytes, any pieces.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::fmp4(data));
