//! What browsers send the gateway: MQTT packets cut into WebSocket messages anywhere, and the CONNECT the
//! gateway reads its keep-alive from.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::mqtt_frames(data));
