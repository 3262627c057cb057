//! The RTMP endpoint's server side, fed a publisher's bytes cut where the input's first bytes say: it may
//! refuse, never panic, and hands media on only after a publish with the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::rtmp::PublishSession;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let step = usize::from(cut).max(1) * 7;
    let mut session = PublishSession::new(Some("the-right-key-42"));
    let mut published = false;
    for piece in bytes.chunks(step) {
        let Ok(out) = session.push(piece) else { return };
        assert!(published || out.media.is_empty(), "media before a verified publish");
        if out.publish {
            published = true;
            if session.accept().is_err() {
                return;
            }
        }
    }
});
