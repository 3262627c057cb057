//! The RTMP endpoint's server side, fed a publisher's bytes cut where the input's first bytes say: it may
//! refuse, never panic, and hands media on only after a publish with the key.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::rtmp_session(data));
