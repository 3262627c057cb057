//! A tone in G.711: the linear samples back from µ-law or A-law bytes, and the power at one frequency, to tell
//! which tone a camera received.

use mqtt_video_wire::rtsp::sdp::TalkCodec;

/// G.711 back to linear (ITU-T G.711), to read what the camera received.
pub fn linear(byte: u8, codec: &TalkCodec) -> i32 {
    match codec {
        TalkCodec::Pcmu => {
            let u = !byte;
            let t = ((i32::from(u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4);
            if u & 0x80 != 0 {
                0x84 - t
            } else {
                t - 0x84
            }
        }
        _ => {
            let a = byte ^ 0x55;
            let exponent = (a & 0x70) >> 4;
            let mantissa = i32::from(a & 0x0F);
            let magnitude =
                if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
            if a & 0x80 != 0 {
                magnitude
            } else {
                -magnitude
            }
        }
    }
}

/// The power at `freq` Hz of `samples` at 8 kHz (Goertzel).
pub fn power(samples: &[i32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
}
