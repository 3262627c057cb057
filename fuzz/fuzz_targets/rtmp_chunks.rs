//! The RTMP chunk stream reader alone, with the limits of a verified publisher: any bytes, any pieces.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::rtmp_chunks(data));
