//! What the pipeline reads itself from a source's bytes: H.264 SPS (in-band parameter sets), ADTS headers,
//! and the FLV tags of an RTMP aggregate message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::rtmp::flv;
use mqtt_video_wire::{aac, h264};

fuzz_target!(|data: &[u8]| {
    if let Ok(sps) = h264::parse_sps(data) {
        assert!(sps.width > 0 && sps.height > 0);
    }
    let _ = aac::adts_config(data);
    let _ = flv::tags(data);
});
