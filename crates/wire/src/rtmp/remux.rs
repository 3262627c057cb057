//! What the relay hands libavformat from a verified publisher's audio, video and metadata tags: an FLV
//! stream, as RTMP's messages are FLV tags already; or, when the video comes in enhanced RTMP (a FourCC:
//! `hvc1`, `av01`, `vp09`, `avc1`), the same frames in Matroska, since the FLV demuxer of FFmpeg 5.1 (Debian
//! 12's) predates enhanced FLV. Which one is decided at the first video tag; audio and metadata before it
//! wait (a few, for a while). Pure: tags in, bytes out.

use super::flv;
use super::matroska::{self, Writer};
use super::RtmpError;

/// Tags held while the container is undecided: an audio-only publisher decides it by going past these.
const MAX_HELD_TAGS: usize = 256;
const MAX_HELD_BYTES: usize = 4 << 20;
/// Media time a Matroska stream waits for the audio's configuration once the video's is in (a publisher
/// sends both before its first frames; one whose audio never says what it is plays without it).
const AUDIO_CONFIG_WAIT_MS: i64 = 1000;
/// Frames held for a Matroska header that has not gone out (its video configuration has not come).
const MAX_PENDING_BYTES: usize = 8 << 20;

/// FLV's SoundFormat for AAC, and AAC's packet types.
const SOUND_AAC: u8 = 10;
const AAC_CONFIG: u8 = 0;
const AAC_FRAME: u8 = 1;

/// The container going to libavformat.
#[derive(Debug, Default)]
pub struct Remux {
    state: State,
    /// What onMetaData said: (audio, video).
    metadata_tracks: Option<(bool, bool)>,
}

#[derive(Debug, Default)]
enum State {
    /// Before the first video tag: what came so far.
    #[default]
    Undecided,
    /// FLV, once its header is out (`false` until then).
    Flv(bool),
    /// Matroska.
    Matroska(Box<Mkv>),
}

/// A Matroska stream: its tracks' configurations until its header goes out, then its blocks.
#[derive(Debug, Default)]
struct Mkv {
    writer: Writer,
    /// The video's codec ID and configuration (its SequenceStart).
    video: Option<(&'static str, Vec<u8>)>,
    /// The AAC AudioSpecificConfig, with its rate and channels.
    audio: Option<(Vec<u8>, (u32, u32))>,
    /// Whether audio is coming (said by the metadata, or seen).
    audio_expected: bool,
    started: bool,
    /// Frames before the header: (track is video, pts ms, keyframe, data), and their bytes.
    pending: Vec<(bool, i64, bool, Vec<u8>)>,
    pending_bytes: usize,
    has_audio_track: bool,
}

/// A video tag, legacy or enhanced, as far as the relay needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// Enhanced RTMP's decoder configuration (`hvcC`, `av1C`, `vpcC`, `avcC`) for the codec of this FourCC.
    Config([u8; 4], &'a [u8]),
    /// A coded frame: FourCC, keyframe, composition time offset (ms), the frame.
    Frame([u8; 4], bool, i32, &'a [u8]),
    /// Something with nothing to show (an end of sequence, a command frame, HDR metadata).
    Other,
    /// A legacy tag (a codec ID in its first byte, not a FourCC): for the FLV demuxer.
    Legacy,
}

/// Reads a video tag's header (enhanced RTMP v1: `IsExHeader`, FrameType, PacketType, FourCC).
pub fn video_tag(data: &[u8]) -> Result<VideoTag<'_>, RtmpError> {
    let Some(&first) = data.first() else { return Ok(VideoTag::Other) };
    if first & 0x80 == 0 {
        return Ok(VideoTag::Legacy);
    }
    let frame_type = (first >> 4) & 0x07;
    let packet_type = first & 0x0f;
    let fourcc: [u8; 4] = data.get(1..5).and_then(|f| f.try_into().ok()).ok_or(RtmpError::Malformed("video tag"))?;
    let body = &data[5..];
    if frame_type == 5 {
        return Ok(VideoTag::Other);
    }
    let keyframe = frame_type == 1;
    match packet_type {
        0 => Ok(VideoTag::Config(fourcc, body)),
        1 if matches!(&fourcc, b"hvc1" | b"avc1") => {
            let cts = body.get(..3).ok_or(RtmpError::Malformed("video tag"))?;
            // SI24: 24 bits, sign-extended.
            let cts = (u32::from_be_bytes([0, cts[0], cts[1], cts[2]]) << 8) as i32 >> 8;
            Ok(VideoTag::Frame(fourcc, keyframe, cts, &body[3..]))
        }
        1 | 3 => Ok(VideoTag::Frame(fourcc, keyframe, 0, body)),
        2 | 4 => Ok(VideoTag::Other),
        _ => Err(RtmpError::Unsupported("enhanced RTMP multitrack, ModEx or MPEG-TS sequences")),
    }
}

/// Matroska's codec ID for an enhanced RTMP FourCC.
fn codec_id(fourcc: &[u8; 4]) -> Result<&'static str, RtmpError> {
    match fourcc {
        b"hvc1" => Ok("V_MPEGH/ISO/HEVC"),
        b"avc1" => Ok("V_MPEG4/ISO/AVC"),
        b"av01" => Ok("V_AV1"),
        b"vp09" => Ok("V_VP9"),
        _ => Err(RtmpError::Unsupported("an enhanced RTMP video codec other than hvc1, avc1, av01, vp09")),
    }
}

impl Remux {
    /// What the metadata says comes: (audio, video).
    pub fn metadata(&mut self, tracks: (bool, bool)) {
        self.metadata_tracks = Some(tracks);
        if let State::Matroska(m) = &mut self.state {
            m.audio_expected |= tracks.0;
        }
    }

    /// Whether the stream went to Matroska.
    pub fn is_matroska(&self) -> bool {
        matches!(self.state, State::Matroska(_))
    }

    /// One tag (`flv::AUDIO`, `flv::VIDEO`, `flv::SCRIPT`) at `timestamp` (ms, decode time): what it adds to
    /// the stream goes to `out`. Tags before the container is decided are held in `held`.
    pub fn tag(
        &mut self,
        held: &mut Vec<(u8, u32, Vec<u8>)>,
        tag_type: u8,
        timestamp: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RtmpError> {
        if matches!(self.state, State::Undecided) {
            let decided = match (tag_type, self.metadata_tracks) {
                (flv::VIDEO, _) => Some(match video_tag(data)? {
                    VideoTag::Legacy => State::Flv(false),
                    _ => State::Matroska(Box::default()),
                }),
                (_, Some((_, false))) => Some(State::Flv(false)),
                _ if held.len() >= MAX_HELD_TAGS || held.iter().map(|h| h.2.len()).sum::<usize>() > MAX_HELD_BYTES => {
                    Some(State::Flv(false))
                }
                _ => None,
            };
            let Some(state) = decided else {
                held.push((tag_type, timestamp, data.to_vec()));
                return Ok(());
            };
            self.state = state;
            if let State::Matroska(m) = &mut self.state {
                m.audio_expected = self.metadata_tracks.is_some_and(|(audio, _)| audio);
            }
            for (t, ts, d) in std::mem::take(held) {
                self.decided(t, ts, &d, out)?;
            }
        }
        self.decided(tag_type, timestamp, data, out)
    }

    fn decided(&mut self, tag_type: u8, timestamp: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), RtmpError> {
        match &mut self.state {
            State::Undecided => Ok(()),
            State::Flv(started) => {
                if !*started {
                    let (audio, video) = match (self.metadata_tracks, tag_type) {
                        (Some(tracks), _) => tracks,
                        // Data that is not metadata, before anything says which tracks come: of no use.
                        (None, flv::SCRIPT) => return Ok(()),
                        (None, t) => (t == flv::AUDIO, t == flv::VIDEO),
                    };
                    out.extend_from_slice(&flv::header(audio, video));
                    *started = true;
                }
                flv::put_tag(out, tag_type, timestamp, data);
                Ok(())
            }
            State::Matroska(m) => m.tag(tag_type, i64::from(timestamp), data, out),
        }
    }
}

impl Mkv {
    fn tag(&mut self, tag_type: u8, dts: i64, data: &[u8], out: &mut Vec<u8>) -> Result<(), RtmpError> {
        match tag_type {
            flv::VIDEO => match video_tag(data)? {
                VideoTag::Config(fourcc, config) => {
                    let config = (codec_id(&fourcc)?, config.to_vec());
                    match &self.video {
                        Some(old) if *old == config => {}
                        Some(_) if self.started => {
                            return Err(RtmpError::Unsupported("a new video configuration mid-stream"))
                        }
                        _ => self.video = Some(config),
                    }
                }
                VideoTag::Frame(_, keyframe, cts, frame) if self.video.is_some() => {
                    self.frame(true, dts + i64::from(cts), keyframe, frame, out);
                }
                // Frames before their configuration cannot be decoded; a legacy tag amid enhanced ones is not
                // of this stream's codec.
                VideoTag::Frame(..) | VideoTag::Other | VideoTag::Legacy => {}
            },
            flv::AUDIO => match data {
                [format, AAC_CONFIG, config @ ..] if format >> 4 == SOUND_AAC => {
                    self.audio_expected = true;
                    if self.audio.is_none() && !self.started {
                        if let Some(spec) = crate::aac::config_rate_and_channels(config) {
                            self.audio = Some((config.to_vec(), spec));
                        }
                    }
                }
                [format, AAC_FRAME, frame @ ..] if format >> 4 == SOUND_AAC => {
                    self.audio_expected = true;
                    self.frame(false, dts, true, frame, out);
                    if self.pending_bytes > MAX_PENDING_BYTES {
                        return Err(RtmpError::Malformed("enhanced RTMP video without its configuration"));
                    }
                }
                // Other audio (MP3, G.711, enhanced audio) is not carried into Matroska here.
                _ => {}
            },
            _ => {}
        }
        self.start_when_ready(out);
        Ok(())
    }

    /// A frame: written once the header is out, else kept for it.
    fn frame(&mut self, video: bool, pts: i64, keyframe: bool, data: &[u8], out: &mut Vec<u8>) {
        if !self.started {
            self.pending_bytes += data.len();
            self.pending.push((video, pts, keyframe, data.to_vec()));
        } else if video {
            self.writer.block(1, pts, keyframe, true, data, out);
        } else if self.has_audio_track {
            self.writer.block(2, pts, true, false, data, out);
        }
    }

    /// Writes the header once the video's configuration is in and the audio's too (or it is not coming),
    /// then the frames that waited for it.
    fn start_when_ready(&mut self, out: &mut Vec<u8>) {
        let Some((codec_id, config)) = self.video.clone() else { return };
        if self.started {
            return;
        }
        let videos = self.pending.iter().filter(|p| p.0).map(|p| p.1);
        let waited = videos.clone().max().zip(videos.min()).map_or(0, |(max, min)| max - min);
        if self.audio.is_none() && self.audio_expected && waited < AUDIO_CONFIG_WAIT_MS {
            return;
        }
        let mut tracks = vec![matroska::Track { codec_id, codec_private: config, audio: None }];
        if let Some((asc, spec)) = &self.audio {
            tracks.push(matroska::Track { codec_id: "A_AAC", codec_private: asc.clone(), audio: Some(*spec) });
            self.has_audio_track = true;
        }
        self.writer.header(&tracks, out);
        self.started = true;
        // From the first video keyframe: what came before it cannot be shown.
        let pending = std::mem::take(&mut self.pending);
        let first_key = pending.iter().position(|p| p.0 && p.2).unwrap_or(pending.len());
        for (video, pts, keyframe, data) in &pending[first_key..] {
            self.frame(*video, *pts, *keyframe, data, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enhanced(frame_type: u8, packet_type: u8, fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut tag = vec![0x80 | frame_type << 4 | packet_type];
        tag.extend_from_slice(fourcc);
        tag.extend_from_slice(body);
        tag
    }

    #[test]
    fn video_tags_legacy_and_enhanced() {
        assert_eq!(video_tag(&[0x17, 0, 0, 0, 0]).unwrap(), VideoTag::Legacy, "AVC, legacy");
        assert_eq!(video_tag(&enhanced(1, 0, b"hvc1", b"cfg")).unwrap(), VideoTag::Config(*b"hvc1", b"cfg"));
        let coded = enhanced(1, 1, b"hvc1", &[0xff, 0xff, 0xd8, 9]);
        assert_eq!(video_tag(&coded).unwrap(), VideoTag::Frame(*b"hvc1", true, -40, &[9]), "SI24 -40 ms");
        let coded = enhanced(2, 1, b"hvc1", &[0, 0, 40, 9]);
        assert_eq!(video_tag(&coded).unwrap(), VideoTag::Frame(*b"hvc1", false, 40, &[9]));
        assert_eq!(video_tag(&enhanced(2, 3, b"hvc1", &[9])).unwrap(), VideoTag::Frame(*b"hvc1", false, 0, &[9]));
        assert_eq!(video_tag(&enhanced(1, 1, b"av01", &[9])).unwrap(), VideoTag::Frame(*b"av01", true, 0, &[9]));
        assert_eq!(video_tag(&enhanced(5, 1, b"hvc1", &[])).unwrap(), VideoTag::Other, "a command frame");
        assert_eq!(video_tag(&enhanced(1, 2, b"hvc1", &[])).unwrap(), VideoTag::Other, "end of sequence");
        assert!(video_tag(&enhanced(1, 6, b"hvc1", &[])).is_err(), "multitrack");
        assert!(video_tag(&enhanced(1, 1, b"hvc1", &[0])).is_err(), "a cut composition time");
        assert!(video_tag(&[0x90, b'h']).is_err(), "a cut FourCC");
        assert_eq!(video_tag(&[]).unwrap(), VideoTag::Other);
    }

    fn run(remux: &mut Remux, tags: &[(u8, u32, Vec<u8>)]) -> Result<Vec<u8>, RtmpError> {
        let (mut held, mut out) = (Vec::new(), Vec::new());
        for (t, ts, d) in tags {
            remux.tag(&mut held, *t, *ts, d, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn legacy_video_stays_flv_with_what_waited_before_it() {
        let mut remux = Remux::default();
        let tags = [(flv::AUDIO, 0, vec![0xaf, 0, 0x11, 0x90]), (flv::VIDEO, 0, vec![0x17, 0, 0, 0, 0])];
        let out = run(&mut remux, &tags).unwrap();
        assert_eq!(&out[..3], b"FLV");
        assert_eq!(out[4], 4, "the flags of the first tag, audio, as before");
        assert_eq!(flv::tags(&out[13..]).map(|t| t.len()), Some(2), "both tags, in order");
        assert!(!remux.is_matroska());
    }

    #[test]
    fn audio_only_publishers_go_flv_by_their_metadata_or_after_a_while() {
        let mut remux = Remux::default();
        remux.metadata((true, false));
        assert_eq!(&run(&mut remux, &[(flv::AUDIO, 0, vec![0xaf, 1, 7])]).unwrap()[..3], b"FLV");
        let mut remux = Remux::default();
        let audio: Vec<_> = (0..MAX_HELD_TAGS as u32 + 1).map(|i| (flv::AUDIO, i * 20, vec![0xaf, 1, 7])).collect();
        let out = run(&mut remux, &audio).unwrap();
        assert_eq!(flv::tags(&out[13..]).map(|t| t.len()), Some(MAX_HELD_TAGS + 1));
    }

    #[test]
    fn enhanced_hevc_becomes_matroska_from_its_first_keyframe_with_the_aac_beside_it() {
        let mut remux = Remux::default();
        remux.metadata((true, true));
        let tags = [
            (flv::SCRIPT, 0, b"meta".to_vec()),
            (flv::VIDEO, 0, enhanced(1, 0, b"hvc1", b"HVCC")),
            (flv::VIDEO, 0, enhanced(2, 1, b"hvc1", &[0, 0, 0, b'x'])),
            (flv::AUDIO, 0, vec![0xaf, 0, 0x11, 0x90]),
            (flv::VIDEO, 33, enhanced(1, 1, b"hvc1", &[0, 0, 33, b'K'])),
            (flv::AUDIO, 21, vec![0xaf, 1, b'a']),
            (flv::VIDEO, 66, enhanced(1, 0, b"hvc1", b"HVCC")),
            (flv::VIDEO, 66, enhanced(2, 1, b"hvc1", &[0, 0, 0, b'p'])),
        ];
        let out = run(&mut remux, &tags).unwrap();
        assert!(remux.is_matroska());
        assert_eq!(&out[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
        let find = |needle: &[u8]| out.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"V_MPEGH/ISO/HEVC").is_some() && find(b"A_AAC").is_some());
        assert!(find(&[0x63, 0xA2, 0x84, b'H', b'V', b'C', b'C']).is_some(), "the hvcC as CodecPrivate");
        assert!(find(&[0xA3, 0x85, 0x81, 0, 0, 0x80, b'x']).is_none(), "the frame before the keyframe is dropped");
        assert!(find(&[0xA3, 0x85, 0x81, 0, 0, 0x80, b'K']).is_some(), "the keyframe at 33 + 33 ms opens a cluster");
        assert!(find(&[0xE7, 0x81, 66]).is_some());
        assert!(find(&[0xA3, 0x85, 0x82, 0xff, 0xd3, 0x80, b'a']).is_some(), "the audio at 21 ms: -45");
        assert!(find(&[0xA3, 0x85, 0x81, 0, 0, 0, b'p']).is_some(), "the same configuration again changes nothing");
        assert!(find(b"meta").is_none(), "no FLV metadata in Matroska");

        let changed = [(flv::VIDEO, 100, enhanced(1, 0, b"hvc1", b"OTHER"))];
        assert!(matches!(run(&mut remux, &changed), Err(RtmpError::Unsupported(_))));
    }

    #[test]
    fn audio_that_never_says_what_it_is_is_left_out_after_a_second() {
        let mut remux = Remux::default();
        remux.metadata((true, true));
        let mut tags = vec![(flv::VIDEO, 0, enhanced(1, 0, b"hvc1", b"C"))];
        tags.extend((0..40).map(|i| (flv::VIDEO, i * 33, enhanced(if i == 0 { 1 } else { 2 }, 3, b"hvc1", b"f"))));
        let out = run(&mut remux, &tags).unwrap();
        let find = |needle: &[u8]| out.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"V_MPEGH/ISO/HEVC").is_some() && find(b"A_AAC").is_none());
        assert!(run(&mut remux, &[(flv::VIDEO, 2000, enhanced(2, 7, b"hvc1", b""))]).is_err(), "ModEx");
        assert!(run(&mut Remux::default(), &[(flv::VIDEO, 0, enhanced(1, 0, b"xyz1", b""))]).is_err());
    }
}
