//! Fragmented MP4 muxing into memory: libavformat's mov muxer writes into a shared buffer, the pure
//! splitter cuts it into the init segment and fragments; [`fragments`] numbers and dates them on the
//! stream's timeline.

pub mod fragments;

use crate::media::error::{processing, MediaError};
use crate::media::ffi;
use crate::media::timing::DurationFixer;
use ffmpeg::format::context::{Output, StreamIo};
use ffmpeg::{codec, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::fmp4::{self, Segment, Splitter, TrackInfo};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// Time base of the output's video, copied or encoded: the RTP/MPEG-TS clock, fine enough for any frame rate.
pub const VIDEO_TIME_BASE: Rational = Rational(1, 90_000);

/// The muxer's byte sink. FFmpeg needs a `Write + Send + 'static`; the worker thread reads it back.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A track to add to the muxer: its codec parameters and the time base its packets use.
#[derive(Clone)]
pub struct TrackSpec {
    /// Codec parameters (from an opened encoder or a copied input stream).
    pub parameters: codec::Parameters,
    /// Time base of the packets that will be written.
    pub time_base: Rational,
    /// Whether this is the video track that drives fragmenting.
    pub is_video: bool,
    /// Whether the parameters come from an input stream (remux): its codec tag must be cleared.
    pub copied: bool,
}

/// A running fMP4 muxer.
pub struct Muxer {
    output: Output,
    sink: SharedBuf,
    splitter: Splitter,
    packet_time_bases: Vec<Rational>,
    stream_time_bases: Vec<Rational>,
    video_index: Option<usize>,
    /// Video duration buffered in the open fragment, in the video stream's time base.
    pending_video: i64,
    /// Least video duration before a fragment is flushed, in the video stream's time base.
    min_fragment: i64,
    tracks: Vec<TrackInfo>,
}

/// Output of one muxer call.
pub type Segments = Vec<Segment>;

impl Muxer {
    /// Creates the muxer and writes the header; the first returned segment is the init segment.
    pub fn new(specs: Vec<TrackSpec>, min_fragment_ms: u32) -> Result<(Self, Segments), MediaError> {
        let sink = SharedBuf::default();
        let io = StreamIo::from_write(sink.clone()).map_err(processing("creating the MP4 output"))?;
        let mut output =
            ffmpeg::format::output_to_stream(io, None, Some("mp4")).map_err(processing("creating the MP4 muxer"))?;
        let mut video_index = None;
        let mut packet_time_bases = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let mut stream =
                output.add_stream(ffmpeg::encoder::find(codec::Id::None)).map_err(processing("adding an MP4 track"))?;
            let mut parameters = spec.parameters;
            if spec.copied {
                let tag = if parameters.id() == codec::Id::HEVC { *b"hvc1" } else { [0; 4] };
                ffi::set_codec_tag(&mut parameters, tag);
            }
            stream.set_parameters(parameters);
            stream.set_time_base(spec.time_base);
            if spec.is_video {
                video_index = Some(i);
            }
            packet_time_bases.push(spec.time_base);
        }
        let mut options = Dictionary::new();
        // A restarted source must continue the timeline its viewers already play. By default the mov muxer
        // makes fragmented output start at 0 (avoid_negative_ts becomes make_zero when there is no edit list);
        // our timestamps are never negative, so nothing needs shifting, and frag_discont makes the first
        // tfdt the packets' own time.
        options.set("movflags", "frag_keyframe+empty_moov+default_base_moof+frag_discont");
        options.set("avoid_negative_ts", "make_non_negative");
        options.set("use_editlist", "0");
        output.write_header_with(options).map_err(processing("writing the MP4 header"))?;
        // The muxer picks its own time bases at write_header.
        let stream_time_bases: Vec<Rational> = output.streams().map(|s| s.time_base()).collect();
        ffi::flush_io(&mut output);

        let min_fragment = video_index.map_or(0, |i| {
            let tb = stream_time_bases[i];
            i64::from(min_fragment_ms) * i64::from(tb.denominator()) / (1000 * i64::from(tb.numerator().max(1)))
        });
        let mut muxer = Self {
            output,
            sink,
            splitter: Splitter::new(),
            packet_time_bases,
            stream_time_bases,
            video_index,
            pending_video: 0,
            min_fragment,
            tracks: Vec::new(),
        };
        let segments = muxer.drain()?;
        match segments.first() {
            Some(Segment::Init(init)) => muxer.tracks = fmp4::parse_init(init)?,
            _ => return Err(MediaError::Processing("the MP4 muxer wrote no init segment".into())),
        }
        Ok((muxer, segments))
    }

    /// The tracks of the init segment.
    pub fn tracks(&self) -> &[TrackInfo] {
        &self.tracks
    }

    /// The time base the muxer chose for stream `index` (also the `tfdt` unit of that track).
    pub fn stream_time_base(&self, index: usize) -> Rational {
        self.stream_time_bases[index]
    }

    /// Writes one packet (timestamps in the track's packet time base) and returns the segments it completed.
    pub fn write(&mut self, mut packet: Packet, index: usize) -> Result<Segments, MediaError> {
        packet.set_stream(index);
        packet.rescale_ts(self.packet_time_bases[index], self.stream_time_bases[index]);
        // Non-interleaved writes: the interleaving queue would hold video back waiting for audio.
        packet.write(&mut self.output).map_err(processing("muxing a packet"))?;
        if Some(index) == self.video_index {
            self.pending_video += packet.duration().max(1);
            if self.pending_video >= self.min_fragment {
                self.flush()?;
            }
        }
        self.drain()
    }

    /// Closes the open fragment now.
    pub fn flush(&mut self) -> Result<(), MediaError> {
        self.pending_video = 0;
        ffi::flush_fragment(&mut self.output).map_err(processing("flushing a fragment"))
    }

    /// Flushes the last fragment and writes the trailer.
    pub fn finish(&mut self) -> Result<Segments, MediaError> {
        self.flush()?;
        self.output.write_trailer().map_err(processing("finishing the MP4 output"))?;
        ffi::flush_io(&mut self.output);
        self.drain()
    }

    fn drain(&mut self) -> Result<Segments, MediaError> {
        let bytes = self.sink.take();
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.splitter.push(&bytes)?)
    }
}

/// Each track's decode times, kept increasing and contiguous (see [`DurationFixer`]) before the muxer.
#[derive(Debug, Default)]
pub struct TrackPlacer {
    last_dts: [Option<i64>; 2],
    durations: [DurationFixer; 2],
}

impl TrackPlacer {
    /// Places `packet` on `track` (0 or 1); false when it must be dropped: its decode time does not
    /// increase (a loop seam, a camera clock jump), which the muxer would reject.
    pub fn place(&mut self, packet: &mut Packet, track: usize) -> bool {
        let Some(dts) = packet.dts() else { return false };
        if self.last_dts[track].is_some_and(|last| dts <= last) {
            tracing::debug!(track, dts, "dropped a packet whose timestamp does not increase");
            return false;
        }
        self.last_dts[track] = Some(dts);
        let (at, duration) = self.durations[track].place(dts, packet.duration());
        if at != dts {
            packet.set_dts(Some(at));
            packet.set_pts(packet.pts().map(|pts| pts + at - dts));
        }
        packet.set_duration(duration);
        true
    }
}
