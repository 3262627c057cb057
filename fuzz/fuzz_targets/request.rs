//! Control requests as pages publish them: parsed or refused with an error, never a panic; what parses
//! obeys the topic rules.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::request(data));
