//! Video transcoding: decode, scale and convert when needed, encode H.264 with libx264.

use crate::media::config::VideoEncoderConfig;
use crate::media::error::{processing, received, MediaError};
use crate::media::load::frame_shedding::Schedule;
use crate::media::mux::VIDEO_TIME_BASE;
use crate::media::timing::ArrivalTracker;
use ffmpeg::codec::{self, threading};
use ffmpeg::format::Pixel;
use ffmpeg::{decoder, encoder, filter, frame, picture, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

/// A video packet ready for the muxer: timestamps in [`VIDEO_TIME_BASE`], relative to the stream origin.
pub struct EncodedPacket {
    /// The packet.
    pub packet: Packet,
    /// Wall-clock arrival (µs since the epoch) of the source packet it came from.
    pub arrival_us: u64,
}

/// Sees each frame a transcoder encodes: the frame, its output timestamp, its source arrival (µs since the
/// epoch) and whether it is a keyframe.
pub type FrameTap<'a> = dyn FnMut(&frame::Video, i64, u64, bool) -> Result<(), MediaError> + 'a;

/// Output size: the source size fitted into the configured maximum, keeping the aspect ratio, even.
pub fn output_size(width: u32, height: u32, max_width: u32, max_height: u32) -> (u32, u32) {
    let mut scale = 1.0f64;
    if max_width > 0 && width > max_width {
        scale = scale.min(f64::from(max_width) / f64::from(width));
    }
    if max_height > 0 && height > max_height {
        scale = scale.min(f64::from(max_height) / f64::from(height));
    }
    let even = |v: f64| ((v.round() as u32) & !1).max(2);
    (even(f64::from(width) * scale), even(f64::from(height) * scale))
}

/// Frames between keyframes for an interval in seconds.
pub fn gop_frames(interval_secs: f64, fps: f64) -> u32 {
    ((interval_secs * fps).round() as u32).max(1)
}

/// Decodes the source video and encodes H.264.
pub struct VideoTranscoder {
    decoder: decoder::Video,
    input_time_base: Rational,
    config: VideoEncoderConfig,
    output: FrameEncoder,
    /// Source arrival per input timestamp.
    decode_arrivals: ArrivalTracker,
    last_pts: Option<i64>,
    frame_duration: i64,
    /// The share of the decoded frames to encode (see `load/frame_shedding.rs`), and which ones.
    share: f64,
    frames: Schedule,
    /// Keyframes by time, whatever the share: one every `key_interval` ticks.
    keys: Schedule,
    key_interval: i64,
    /// The next frame encoded is a keyframe (after a skip ahead).
    force_key: bool,
    /// How far apart the frames being encoded now are, in ticks: their duration.
    spacing: i64,
    frames_shed: u64,
}

/// Scales decoded frames to an output size and encodes them with x264, opened at the first frame.
pub struct FrameEncoder {
    config: VideoEncoderConfig,
    fps: Rational,
    scaler: Option<Scaler>,
    encoder: Option<encoder::Video>,
    /// Source arrival per encoder timestamp.
    arrivals: ArrivalTracker,
    /// Longest run between keyframes x264 may take on its own (keyframes are forced by the caller).
    max_gop: u32,
}

struct Scaler {
    graph: filter::Graph,
    input: (u32, u32, Pixel),
}

impl VideoTranscoder {
    /// A decoder for `parameters`; the encoder is opened at the first frame, when the real size is known.
    pub fn new(
        parameters: codec::Parameters,
        input_time_base: Rational,
        fps: Rational,
        config: &VideoEncoderConfig,
        live: bool,
    ) -> Result<Self, MediaError> {
        let mut context =
            codec::context::Context::from_parameters(parameters).map_err(processing("reading video parameters"))?;
        // Frame threads add a frame of delay per thread; live sources decode on slice threads instead.
        let kind = if live { threading::Type::Slice } else { threading::Type::Frame };
        context.set_threading(threading::Config { kind, count: 0, ..Default::default() });
        if live {
            context.set_flags(codec::Flags::LOW_DELAY);
        }
        let decoder =
            context.decoder().video().map_err(|e| MediaError::Unsupported(format!("cannot decode the video: {e}")))?;
        let fps = match config.max_fps {
            0 => fps,
            max if f64::from(fps) > f64::from(max) => Rational(max as i32, 1),
            _ => fps,
        };
        let frame_duration = (VIDEO_TIME_BASE.denominator() as f64 / f64::from(fps)).round() as i64;
        Ok(Self {
            decoder,
            input_time_base,
            config: config.clone(),
            // Keyframes are placed by time (`receive`), whatever share of the frames is encoded; x264's own
            // interval is only a fallback, long enough never to put one just before ours.
            output: FrameEncoder::new(
                config,
                fps,
                gop_frames(config.keyframe_interval_secs, f64::from(fps)).saturating_mul(2),
            ),
            decode_arrivals: ArrivalTracker::default(),
            last_pts: None,
            frame_duration,
            share: 1.0,
            frames: Schedule::default(),
            keys: Schedule::default(),
            key_interval: ((config.keyframe_interval_secs.max(0.0) * f64::from(VIDEO_TIME_BASE.denominator())).round()
                as i64)
                .max(frame_duration),
            force_key: false,
            spacing: frame_duration,
            frames_shed: 0,
        })
    }

    /// Encodes this share (0 < share <= 1) of the decoded frames from now on: a lower frame rate, with
    /// keyframes as often as ever.
    pub fn set_share(&mut self, share: f64) {
        self.share = share.clamp(0.01, 1.0);
    }

    /// Decoded frames left out before the encoder so far.
    pub fn frames_shed(&self) -> u64 {
        self.frames_shed
    }

    /// Starts afresh after the pipeline skipped ahead: what the decoder holds is dropped, and the next frame
    /// encoded is a keyframe, where viewers can pick up.
    pub fn resume(&mut self) {
        self.reset_decoder();
        self.force_key = true;
    }

    /// The opened encoder, once the first frame has been seen (its parameters make the muxer's track).
    pub fn encoder(&self) -> Option<&encoder::Video> {
        self.output.encoder()
    }

    /// Feeds one source packet.
    pub fn send(&mut self, packet: &Packet, arrival_us: u64) -> Result<(), MediaError> {
        if let Some(pts) = packet.pts().or(packet.dts()) {
            self.decode_arrivals.push(pts, arrival_us);
        }
        match self.decoder.send_packet(packet) {
            // A corrupt packet costs a frame, not the stream.
            Ok(()) | Err(ffmpeg::Error::InvalidData) => Ok(()),
            Err(e) => Err(processing("decoding video")(e)),
        }
    }

    /// Signals the end of the input.
    pub fn send_eof(&mut self) -> Result<(), MediaError> {
        self.decoder.send_eof().map_err(processing("flushing the video decoder"))?;
        Ok(())
    }

    /// Drops frames buffered in the decoder (after a seek).
    pub fn reset_decoder(&mut self) {
        self.decoder.flush();
        self.decode_arrivals.clear();
    }

    /// Drains decoded frames through the encoder. `to_rel_us` maps an input timestamp in µs to the output
    /// timeline (None drops the frame: before the origin); `tap` sees each frame encoded, with its output
    /// timestamp, arrival and whether it is a keyframe (the renditions encode the same frames).
    pub fn receive(
        &mut self,
        mut to_rel_us: impl FnMut(i64) -> Option<i64>,
        out: &mut Vec<EncodedPacket>,
        tap: &mut FrameTap<'_>,
    ) -> Result<(), MediaError> {
        let mut decoded = frame::Video::empty();
        loop {
            match received(self.decoder.receive_frame(&mut decoded)) {
                Ok(true) => {}
                Ok(false) => break,
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => return Err(processing("decoding video")(e)),
            }
            let Some(ts) = decoded.timestamp() else { continue };
            let arrival = self.decode_arrivals.take(ts).unwrap_or_else(crate::media::timing::wallclock_us);
            let ts_us = ts.rescale(self.input_time_base, Rational(1, 1_000_000));
            let Some(rel_us) = to_rel_us(ts_us) else { continue };
            let pts = rel_us.rescale(Rational(1, 1_000_000), VIDEO_TIME_BASE);
            // x264 needs strictly increasing timestamps; a max fps drops frames that come too soon.
            if let Some(last) = self.last_pts {
                let min_gap = if self.config.max_fps > 0 { self.frame_duration * 9 / 10 } else { 1 };
                if pts < last + min_gap {
                    continue;
                }
            }
            // Shedding load: only the frames due on a sparser schedule are encoded.
            let tolerance = self.frame_duration / 2;
            self.spacing = self.frame_duration;
            if self.share < 1.0 {
                let interval = (self.frame_duration as f64 / self.share).round() as i64;
                if !self.frames.take(pts, interval, tolerance) {
                    self.frames_shed += 1;
                    continue;
                }
                self.spacing = interval;
            }
            self.last_pts = Some(pts);
            let keyframe = if std::mem::take(&mut self.force_key) {
                self.keys.restart_at(pts, self.key_interval);
                true
            } else {
                self.keys.take(pts, self.key_interval, tolerance)
            };
            tap(&decoded, pts, arrival, keyframe)?;
            self.output.encode(&decoded, pts, arrival, keyframe)?;
            self.output.receive(self.spacing, out)?;
        }
        Ok(())
    }

    /// Flushes the encoder at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), MediaError> {
        self.output.finish(self.spacing, out)
    }
}

impl FrameEncoder {
    /// An encoder for `config` at `fps` (opened at the first frame) that inserts a keyframe on its own only
    /// after `max_gop` frames without one.
    pub fn new(config: &VideoEncoderConfig, fps: Rational, max_gop: u32) -> Self {
        Self { config: config.clone(), fps, scaler: None, encoder: None, arrivals: ArrivalTracker::default(), max_gop }
    }

    /// The opened encoder, once the first frame has been seen.
    pub fn encoder(&self) -> Option<&encoder::Video> {
        self.encoder.as_ref()
    }

    /// Flushes the encoder.
    pub fn finish(&mut self, spacing: i64, out: &mut Vec<EncodedPacket>) -> Result<(), MediaError> {
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.send_eof().map_err(processing("flushing the video encoder"))?;
            self.receive(spacing, out)?;
        }
        Ok(())
    }

    /// Scales and encodes one decoded frame at output timestamp `pts`; a keyframe if `keyframe`.
    pub fn encode(&mut self, decoded: &frame::Video, pts: i64, arrival: u64, keyframe: bool) -> Result<(), MediaError> {
        let (width, height) =
            output_size(decoded.width(), decoded.height(), self.config.max_width, self.config.max_height);
        if self.encoder.is_none() {
            self.encoder = Some(open_x264(width, height, self.fps, &self.config, self.max_gop)?);
        }
        let (out_w, out_h) = self.encoder.as_ref().map_or((width, height), |e| (e.width(), e.height()));
        let kind = if keyframe { picture::Type::I } else { picture::Type::None };
        let needs_scaling = decoded.width() != out_w || decoded.height() != out_h || decoded.format() != Pixel::YUV420P;
        self.arrivals.push(pts, arrival);
        let Some(encoder) = self.encoder.as_mut() else { return Ok(()) };
        if !needs_scaling {
            let mut frame = decoded.clone();
            frame.set_pts(Some(pts));
            // Keyframes by time only: else x264 copies the source's I-frame decisions and breaks the fixed GOP.
            frame.set_kind(kind);
            return encoder.send_frame(&frame).map_err(processing("encoding video"));
        }
        let input = (decoded.width(), decoded.height(), decoded.format());
        if self.scaler.as_ref().map(|s| s.input) != Some(input) {
            self.scaler = Some(Scaler::new(input, (out_w, out_h), decoded.aspect_ratio())?);
        }
        let Some(scaler) = self.scaler.as_mut() else { return Ok(()) };
        let mut source = scaler.graph.get("in").ok_or_else(|| MediaError::Processing("scaler input".into()))?;
        let mut frame = decoded.clone();
        frame.set_pts(Some(pts));
        source.source().add(&frame).map_err(processing("scaling video"))?;
        let mut sink = scaler.graph.get("out").ok_or_else(|| MediaError::Processing("scaler output".into()))?;
        let mut scaled = frame::Video::empty();
        while sink.sink().frame(&mut scaled).is_ok() {
            scaled.set_kind(kind);
            encoder.send_frame(&scaled).map_err(processing("encoding video"))?;
        }
        Ok(())
    }

    /// The packets the encoder has ready, each `spacing` ticks long.
    pub fn receive(&mut self, spacing: i64, out: &mut Vec<EncodedPacket>) -> Result<(), MediaError> {
        let Some(encoder) = self.encoder.as_mut() else { return Ok(()) };
        loop {
            let mut packet = Packet::empty();
            if !received(encoder.receive_packet(&mut packet)).map_err(processing("encoding video"))? {
                return Ok(());
            }
            let pts = packet.pts().unwrap_or(0);
            let arrival = self.arrivals.take(pts).unwrap_or_else(crate::media::timing::wallclock_us);
            packet.set_duration(spacing);
            out.push(EncodedPacket { packet, arrival_us: arrival });
        }
    }
}

use ffmpeg::Rescale;

impl Scaler {
    fn new(input: (u32, u32, Pixel), output: (u32, u32), aspect: Rational) -> Result<Self, MediaError> {
        let err = processing("building the video scaler");
        let mut graph = filter::Graph::new();
        let aspect = if aspect.numerator() > 0 { aspect } else { Rational(1, 1) };
        let pix_fmt: ffmpeg::ffi::AVPixelFormat = input.2.into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            input.0,
            input.1,
            pix_fmt as i32,
            VIDEO_TIME_BASE.numerator(),
            VIDEO_TIME_BASE.denominator(),
            aspect.numerator(),
            aspect.denominator()
        );
        let find = |name| filter::find(name).ok_or_else(|| MediaError::Processing(format!("filter {name} missing")));
        graph.add(&find("buffer")?, "in", &args).map_err(&err)?;
        graph.add(&find("buffersink")?, "out", "").map_err(&err)?;
        let spec = format!("scale={}:{}:flags=bicubic,format=yuv420p", output.0, output.1);
        graph.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&spec)).map_err(&err)?;
        graph.validate().map_err(&err)?;
        Ok(Self { graph, input })
    }
}

/// An x264 encoder at this size and rate that makes a keyframe of its own only after `max_gop` frames.
pub fn open_x264(
    width: u32,
    height: u32,
    fps: Rational,
    config: &VideoEncoderConfig,
    max_gop: u32,
) -> Result<encoder::Video, MediaError> {
    let codec = encoder::find_by_name("libx264")
        .ok_or_else(|| MediaError::Unsupported("this FFmpeg build has no libx264 encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(processing("creating the H.264 encoder"))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base(VIDEO_TIME_BASE);
    enc.set_frame_rate(Some(fps));
    enc.set_gop(max_gop);
    enc.set_max_b_frames(0);
    // MP4 keeps SPS/PPS in the init segment (avcC), not in the stream.
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    if config.bitrate_kbps > 0 {
        enc.set_bit_rate(config.bitrate_kbps as usize * 1000);
    }
    if config.max_bitrate_kbps > 0 {
        enc.set_max_bit_rate(config.max_bitrate_kbps as usize * 1000);
    }
    if config.threads > 0 {
        enc.set_threading(threading::Config {
            kind: threading::Type::Slice,
            count: config.threads as usize,
            ..Default::default()
        });
    }
    let mut options = Dictionary::new();
    options.set("preset", &config.preset);
    if !config.tune.is_empty() {
        options.set("tune", &config.tune);
    }
    options.set("profile", &config.profile);
    if !config.level.is_empty() {
        options.set("level", &config.level);
    }
    if config.bitrate_kbps == 0 {
        options.set("crf", &config.crf.to_string());
    }
    if config.max_bitrate_kbps > 0 {
        options.set("bufsize", &(config.max_bitrate_kbps as usize * 1000).to_string());
    }
    // A scene cut would insert keyframes off the fixed GOP that viewers and fragments rely on.
    options.set("sc_threshold", "0");
    enc.open_with(options).map_err(|e| {
        MediaError::Processing(format!("opening libx264 ({width}x{height}, profile {}): {e}", config.profile))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fit_and_stay_even() {
        assert_eq!(output_size(1920, 1080, 0, 0), (1920, 1080));
        assert_eq!(output_size(1920, 1080, 1280, 0), (1280, 720));
        assert_eq!(output_size(1920, 1080, 1280, 360), (640, 360));
        assert_eq!(output_size(641, 361, 0, 0), (640, 360));
        assert_eq!(output_size(640, 360, 1280, 720), (640, 360), "never scales up");
        assert_eq!(output_size(1, 1, 0, 0), (2, 2));
    }

    #[test]
    fn gop_from_seconds() {
        assert_eq!(gop_frames(1.0, 30.0), 30);
        assert_eq!(gop_frames(2.0, 25.0), 50);
        assert_eq!(gop_frames(0.0, 30.0), 1);
    }
}
