//! HEVC parameter sets as cameras send them: an `hvcC` record, or an SPS in-band (RTSP, MPEG-TS, enhanced
//! RTMP). They decide the codec string a browser is asked about; any bytes, never a panic.
//! The checks live in mqtt_video_wire::fuzz_checks, where the seed replay test runs them too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_video_wire::fuzz_checks::hevc_parameter_sets(data));
