//! Talking back to a camera: its ONVIF backchannel ([`backchannel`], an RTSP session of the server's own) and
//! the audio encoded for it ([`encode`]).

pub mod backchannel;
pub mod encode;
