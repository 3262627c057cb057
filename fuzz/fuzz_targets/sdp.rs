//! A camera's SDP read for its backchannel, and camera URLs split for a session of the server's own.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::sdp(data));
