//! The RTMP chunk stream reader alone, with the limits of a verified publisher: any bytes, any pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::rtmp::chunk::{ChunkReader, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut reader = ChunkReader::new(MAX_MESSAGE_LEN, 1 << 20);
    let mut out = Vec::new();
    for piece in bytes.chunks(usize::from(cut).max(1)) {
        if reader.push(piece, &mut out).is_err() {
            return;
        }
        out.clear();
    }
});
