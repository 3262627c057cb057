//! The RTSP marker splice (crates/wire/src/marker_splice.rs): any camera bytes, in any pieces, never panic, and
//! the output does not depend on where the pieces were cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_video_wire::marker_splice::MarkerSplice;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut whole = Vec::new();
    let whole_result = MarkerSplice::new().feed(bytes, &mut whole);
    let mut splice = MarkerSplice::new();
    let mut pieces = Vec::new();
    let mut first_error = None;
    for piece in bytes.chunks(usize::from(cut).max(1)) {
        if let Err(e) = splice.feed(piece, &mut pieces) {
            first_error.get_or_insert(e);
        }
    }
    if whole_result.is_ok() && first_error.is_none() {
        assert_eq!(whole, pieces);
    }
});
