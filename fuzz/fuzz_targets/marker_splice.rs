//! The RTSP marker splice (crates/wire/src/marker_splice.rs): any camera bytes, in any pieces, never panic, and
//! the output does not depend on where the pieces were cut.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::marker_splice(data));
