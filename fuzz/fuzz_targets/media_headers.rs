//! What the pipeline reads itself from a source's bytes: H.264 SPS (in-band parameter sets), ADTS headers,
//! and the FLV tags of an RTMP aggregate message.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::media_headers(data));
