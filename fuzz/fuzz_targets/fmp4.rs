//! The fMP4 box splitter and the init and moof parsers (the bench and the tests read server output with
//! them; the server reads its own muxer's): any bytes, any pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::fmp4::{self, Segment, Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut splitter = Splitter::new();
    let mut tracks = Vec::new();
    for piece in bytes.chunks(usize::from(cut).max(1) * 13) {
        let Ok(segments) = splitter.push(piece) else { return };
        for segment in segments {
            match segment {
                Segment::Init(init) => tracks = fmp4::parse_init(&init).unwrap_or_default(),
                Segment::Fragment { bytes, moof } => {
                    if let Some(moof) = bytes.get(moof) {
                        let _ = fmp4::parse_moof(moof, &tracks);
                    }
                    if let Ok(Some(prft)) = fmp4::find_box(&bytes, b"prft") {
                        let _ = fmp4::parse_prft(prft);
                    }
                }
            }
        }
    }
});
