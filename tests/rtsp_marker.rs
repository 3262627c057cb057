//! An RTSP camera's H.264 read through the marker relay (`rtsp_frame_end = "marker"`, the default) comes out
//! as the same frames as through libavformat's parser alone: one packet per frame, a frame interval apart,
//! keyframes where the camera put them, every one decoding to a picture, and a delimiter added after each
//! frame. The latency it saves is measured by `tests/e2e/bench.js --frame-end marker,parser`.

mod support;

use ffmpeg_next as ffmpeg;
use mqtt_video::media::config::{RtspFrameEnd, RtspTransport, SourceConfig};
use mqtt_video::media::source;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use support::RtspServer;

/// Frames read from the camera, after the first keyframe.
const FRAMES: usize = 75;

struct Read {
    /// Presentation times in the stream's time base.
    pts: Vec<i64>,
    keyframes: Vec<usize>,
    decoded: usize,
    injected: Option<u64>,
    frame_ticks: i64,
}

fn read(url: &str, frame_end: RtspFrameEnd) -> Read {
    mqtt_video::media::init_process();
    let config =
        SourceConfig { rtsp_frame_end: frame_end, rtsp_transport: RtspTransport::Tcp, ..SourceConfig::default() };
    let mut source = source::open(url, &config, Arc::new(AtomicBool::new(false))).expect("opening the camera");
    let video = source.input.streams().best(ffmpeg::media::Type::Video).expect("a video stream");
    let (index, tb) = (video.index(), video.time_base());
    let frame_ticks = i64::from(tb.denominator()) / 30 / i64::from(tb.numerator());
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(video.parameters())
        .and_then(|c| c.decoder().video())
        .expect("an H.264 decoder");
    let (mut pts, mut keyframes, mut decoded) = (Vec::new(), Vec::new(), 0);
    let mut frame = ffmpeg::frame::Video::empty();
    for (stream, packet) in source.input.packets() {
        // The first packets may come before libavformat has a timestamp for them, as with ffprobe.
        if stream.index() != index || (pts.is_empty() && (!packet.is_key() || packet.pts().is_none())) {
            continue;
        }
        if packet.is_key() {
            keyframes.push(pts.len());
        }
        pts.push(packet.pts().expect("a timestamp"));
        decoder.send_packet(&packet).expect("the decoder takes every frame");
        while decoder.receive_frame(&mut frame).is_ok() {
            decoded += 1;
        }
        if pts.len() == FRAMES {
            break;
        }
    }
    let injected = source.relay.as_ref().map(|r| r.counts().injected);
    Read { pts, keyframes, decoded, injected, frame_ticks }
}

fn check(r: &Read, what: &str) {
    assert_eq!(r.pts.len(), FRAMES, "{what}: frames read");
    for pair in r.pts.windows(2) {
        assert_eq!(pair[1] - pair[0], r.frame_ticks, "{what}: one frame interval between frames: {:?}", r.pts);
    }
    // The test camera makes a keyframe every 30 frames (rtsp_server.py --gop 30).
    assert_eq!(r.keyframes, vec![0, 30, 60], "{what}: keyframes");
    // A decoder without frame threads gives each picture back as its packet goes in (no B-frames here).
    assert_eq!(r.decoded, FRAMES, "{what}: every frame decodes to a picture");
}

#[test]
fn the_relay_hands_out_the_frames_the_parser_does() {
    let camera = RtspServer::start(&[]);
    let marker = read(&camera.url, RtspFrameEnd::Marker);
    check(&marker, "marker");
    let injected = marker.injected.expect("read through the relay");
    assert!(injected >= FRAMES as u64, "a delimiter after every frame: {injected}");

    let parser = read(&camera.url, RtspFrameEnd::Parser);
    check(&parser, "parser");
    assert_eq!(parser.injected, None, "no relay");
}

#[test]
fn rtsps_and_udp_do_not_go_through_the_relay() {
    let camera = RtspServer::start(&["--no-audio"]);
    mqtt_video::media::init_process();
    let udp = SourceConfig { rtsp_transport: RtspTransport::Udp, ..SourceConfig::default() };
    let s = source::open(&camera.url, &udp, Arc::new(AtomicBool::new(false))).expect("opening over UDP");
    assert!(s.relay.is_none(), "UDP packets do not cross the RTSP connection");
    assert!(mqtt_video::media::rtsp_relay::relayed(&camera.url.replacen("rtsp://", "rtsps://", 1)).is_none());
}
