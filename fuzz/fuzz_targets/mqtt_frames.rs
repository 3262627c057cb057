//! What browsers send the gateway: MQTT packets cut into WebSocket messages anywhere, and the CONNECT the
//! gateway reads its keep-alive from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::mqtt_frames::{read_connect, Framer};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut framer = Framer::new(64 * 1024);
    let mut packets = Vec::new();
    for piece in bytes.chunks(usize::from(cut).max(1)) {
        if framer.push(piece, &mut packets).is_err() {
            return;
        }
    }
    for p in &packets {
        let _ = read_connect(p);
    }
});
