//! RTSP for talking back to a camera (the ONVIF backchannel): what a camera sends on an RTSP/TCP connection
//! ([`message`]), the SDP of its DESCRIBE ([`sdp`]), its login challenges ([`auth`]) and the RTP packets sent
//! to it ([`rtp`]). Pure: the session that drives them is the server's (`src/talk/`).

pub mod auth;
pub mod message;
pub mod rtp;
pub mod sdp;
pub mod url;
