//! The URL allow-list against any URL a page can send: allowed or refused, never a panic, and what is
//! allowed is under an allowed prefix or a named source.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::policy(data));
