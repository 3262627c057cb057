//! The relay's remux of a verified publisher's FLV tags into FLV, or into Matroska for enhanced RTMP
//! (HEVC, AV1, VP9): it may refuse, never panic, and its stream starts with its container's header.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::rtmp_tags(data));
