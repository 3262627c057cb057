//! What a camera sends on the backchannel's RTSP/TCP connection: responses, its own requests, RTCP.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::rtsp_messages(data));
