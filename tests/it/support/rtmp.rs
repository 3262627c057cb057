//! RTMP publishers for tests, built from the library's own chunk writer and AMF0 encoder: the session
//! ffmpeg opens (handshake, `connect`, `releaseStream`, `FCPublish`, `createStream`, `publish`, metadata,
//! media) at any chunk size, its hostile variants, and a TCP client that plays such a script to a server.

use mqtt_video_wire::rtmp::amf0::{self, Value};
use mqtt_video_wire::rtmp::chunk::{ChunkWriter, Message, SET_CHUNK_SIZE};
use mqtt_video_wire::rtmp::flv;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Message types a publisher sends media and metadata with.
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA: u8 = 18;
pub const COMMAND: u8 = 20;

// The chunk streams libavformat's client uses.
const SYSTEM_CSID: u32 = 3;
const AUDIO_CSID: u32 = 4;
const VIDEO_CSID: u32 = 6;
const SOURCE_CSID: u32 = 8;

/// A publisher's bytes, built step by step.
pub struct Script {
    writer: ChunkWriter,
    pub bytes: Vec<u8>,
    txn: f64,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// C0, C1 and C2 (a publisher's C2 echoes S1, which no server checks).
    pub fn new() -> Self {
        static HANDSHAKE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let handshake = HANDSHAKE.get_or_init(|| {
            let mut bytes = vec![3u8];
            bytes.extend((0..2 * 1536).map(|i| (i * 13 % 251) as u8));
            bytes
        });
        Self { writer: ChunkWriter::default(), bytes: handshake.clone(), txn: 0.0 }
    }

    /// A message on chunk stream `csid`.
    pub fn message(&mut self, csid: u32, type_id: u8, stream_id: u32, timestamp: u32, payload: Vec<u8>) -> &mut Self {
        self.writer.write(&mut self.bytes, &Message { csid, type_id, stream_id, timestamp, payload });
        self
    }

    /// Set Chunk Size, then chunks of that size.
    pub fn chunk_size(&mut self, size: u32) -> &mut Self {
        self.message(2, SET_CHUNK_SIZE, 0, 0, size.to_be_bytes().to_vec());
        self.writer.set_chunk_size(size);
        self
    }

    /// A command with the next transaction id and a null command object.
    pub fn command(&mut self, stream_id: u32, name: &str, args: &[Value]) -> &mut Self {
        let csid = if stream_id == 0 { SYSTEM_CSID } else { SOURCE_CSID };
        let body = self.command_body(name, args);
        self.message(csid, COMMAND, stream_id, 0, body)
    }

    fn command_body(&mut self, name: &str, args: &[Value]) -> Vec<u8> {
        self.txn += 1.0;
        let mut body = Vec::new();
        amf0::put_string(&mut body, name);
        amf0::put_number(&mut body, self.txn);
        amf0::put_null(&mut body);
        for arg in args {
            amf0::put(&mut body, arg);
        }
        body
    }

    /// `connect` as libavformat's client sends it.
    pub fn connect(&mut self) -> &mut Self {
        self.txn += 1.0;
        let mut body = Vec::new();
        amf0::put_string(&mut body, "connect");
        amf0::put_number(&mut body, self.txn);
        amf0::put_object(
            &mut body,
            &[
                ("app", Value::String("live".into())),
                ("type", Value::String("nonprivate".into())),
                ("flashVer", Value::String("FMLE/3.0 (compatible; Lavf59.27.100)".into())),
                ("tcUrl", Value::String("rtmp://127.0.0.1:1935/live".into())),
            ],
        );
        self.message(SYSTEM_CSID, COMMAND, 0, 0, body)
    }

    /// `releaseStream(name)`, `FCPublish(name)`, `createStream()`.
    pub fn prepare(&mut self, name: &str) -> &mut Self {
        self.command(0, "releaseStream", &[Value::String(name.into())]);
        self.command(0, "FCPublish", &[Value::String(name.into())]);
        self.command(0, "createStream", &[])
    }

    /// `publish(name, "live")` on stream 1.
    pub fn publish(&mut self, name: &str) -> &mut Self {
        self.command(1, "publish", &[Value::String(name.into()), Value::String("live".into())])
    }

    /// `publish(name)` whose first chunk goes at the current chunk size, then a Set Chunk Size to `then`,
    /// then the rest of the command in chunks of `then`.
    pub fn publish_changing_chunk_size(&mut self, name: &str, then: u32) -> &mut Self {
        let body = self.command_body("publish", &[Value::String(name.into()), Value::String("live".into())]);
        let m = Message { csid: SOURCE_CSID, type_id: COMMAND, stream_id: 1, timestamp: 0, payload: body };
        let first_len = m.payload.len().min(self.writer.chunk_size() as usize);
        let chunks = self.writer.chunks(&m);
        self.bytes.extend_from_slice(&chunks[0]);
        self.chunk_size(then);
        for piece in m.payload[first_len..].chunks(then as usize) {
            self.bytes.push(0xc0 | SOURCE_CSID as u8);
            self.bytes.extend_from_slice(piece);
        }
        self
    }

    /// The whole opening of a publisher at `chunk_size`, up to and including `publish(name)`.
    pub fn ffmpeg_opening(name: &str, chunk_size: u32) -> Self {
        let mut s = Self::new();
        s.chunk_size(chunk_size).connect().prepare(name).publish(name);
        s
    }

    /// `@setDataFrame("onMetaData", {...})` announcing H.264 video and AAC audio.
    pub fn metadata(&mut self) -> &mut Self {
        let mut body = Vec::new();
        amf0::put_string(&mut body, "@setDataFrame");
        amf0::put_string(&mut body, "onMetaData");
        amf0::put(
            &mut body,
            &Value::EcmaArray(vec![
                ("width".into(), Value::Number(320.0)),
                ("videocodecid".into(), Value::Number(7.0)),
                ("audiocodecid".into(), Value::Number(10.0)),
            ]),
        );
        self.message(AUDIO_CSID, DATA, 1, 0, body)
    }

    /// An audio or video message on stream 1.
    pub fn media(&mut self, type_id: u8, timestamp: u32, payload: &[u8]) -> &mut Self {
        let csid = if type_id == AUDIO { AUDIO_CSID } else { VIDEO_CSID };
        self.message(csid, type_id, 1, timestamp, payload.to_vec())
    }

    /// The bytes so far, taken.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// The tags of an FLV file (made by the ffmpeg CLI): type, timestamp, data.
pub fn flv_file_tags(file: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let body = file.get(13..).expect("an FLV header");
    flv::tags(body)
        .expect("whole FLV tags")
        .into_iter()
        .map(|t| (t.tag_type, t.timestamp_ms, t.data.to_vec()))
        .collect()
}

/// A TCP connection to an RTMP endpoint, the server's answers collected on a thread of their own.
pub struct Connection {
    pub socket: TcpStream,
    received: Arc<Mutex<(Vec<u8>, bool)>>,
}

impl Connection {
    /// Connects from `from` (an address on loopback such as 127.0.0.2, or None for any).
    pub fn open(port: u16, from: Option<&str>) -> Self {
        let socket = match from {
            None => TcpStream::connect(("127.0.0.1", port)).expect("connect"),
            Some(ip) => super::connect_from(ip, port),
        };
        let _ = socket.set_nodelay(true);
        let received = Arc::new(Mutex::new((Vec::new(), false)));
        let (mut reader, sink) = (socket.try_clone().expect("clone"), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().0.extend_from_slice(&buf[..n]),
                }
            }
            sink.lock().unwrap().1 = true;
        });
        Self { socket, received }
    }

    /// Sends bytes; false once the server has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.socket.write_all(bytes).is_ok()
    }

    /// Whether the server's answers so far contain `needle`.
    pub fn heard(&self, needle: &[u8]) -> bool {
        self.received.lock().unwrap().0.windows(needle.len()).any(|w| w == needle)
    }

    /// Waits until the server's answers contain `needle`.
    pub fn wait_for(&self, needle: &[u8], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.heard(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits until the server closes the connection.
    pub fn closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.received.lock().unwrap().1 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends FLV tags as RTMP media at their own pace (`-re`), until the tags end, `limit` passes, or the
    /// server closes; returns how many went out.
    pub fn send_media(&mut self, script: &mut Script, tags: &[(u8, u32, Vec<u8>)], limit: Duration) -> usize {
        let started = Instant::now();
        let mut sent = 0;
        for (tag_type, ts, data) in tags {
            let due = started + Duration::from_millis(u64::from(*ts));
            if due > started + limit {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            match *tag_type {
                flv::SCRIPT => {
                    let mut body = Vec::new();
                    amf0::put_string(&mut body, "@setDataFrame");
                    body.extend_from_slice(data);
                    script.message(AUDIO_CSID, DATA, 1, *ts, body);
                }
                t => {
                    script.media(t, *ts, data);
                }
            }
            if !self.send(&script.take()) {
                break;
            }
            sent += 1;
        }
        sent
    }
}

/// An HEVC + AAC file's media as an OBS-style enhanced RTMP publisher sends it, as (type, timestamp, data)
/// tags for [`Connection::send_media`]: the `hvcC` in a SequenceStart (FourCC `hvc1`), the AAC config, then
/// each frame, video as CodedFrames with its composition time offset, timestamps its decode time in ms.
pub fn enhanced_hevc_tags(path: &std::path::Path) -> Vec<(u8, u32, Vec<u8>)> {
    use ffmpeg_next as ffmpeg;
    let file = std::fs::read(path).expect("the HEVC file");
    // The hvcC box as the file holds it: its 4-byte size, then "hvcC", then the record.
    let at = file.windows(4).position(|w| w == b"hvcC").expect("an hvcC in the file");
    let size = u32::from_be_bytes(file[at - 4..at].try_into().expect("4 bytes")) as usize;
    let hvcc = file[at + 4..at - 4 + size].to_vec();
    let mut input = ffmpeg::format::input(&path).expect("the file opens");
    let video = input.streams().best(ffmpeg::media::Type::Video).expect("video");
    let audio = input.streams().best(ffmpeg::media::Type::Audio).expect("audio");
    let (vi, vtb, ai, atb) = (video.index(), video.time_base(), audio.index(), audio.time_base());
    let decoder = ffmpeg::codec::context::Context::from_parameters(audio.parameters())
        .and_then(|c| c.decoder().audio())
        .expect("the AAC's parameters");
    let asc = mqtt_video_wire::aac::audio_specific_config(1, decoder.rate(), u32::from(decoder.channels()))
        .expect("an AAC-LC config");
    let ms = |t: i64, tb: ffmpeg::Rational| t * 1000 * i64::from(tb.numerator()) / i64::from(tb.denominator());
    let mut frames = Vec::new();
    for (stream, packet) in input.packets() {
        let (Some(pts), dts) = (packet.pts(), packet.dts()) else { continue };
        let Some(data) = packet.data() else { continue };
        if stream.index() == vi {
            let (pts, dts) = (ms(pts, vtb), ms(dts.unwrap_or(pts), vtb));
            let mut tag = vec![0x80 | if packet.is_key() { 0x10 } else { 0x20 } | 1];
            tag.extend_from_slice(b"hvc1");
            tag.extend_from_slice(&((pts - dts) as i32).to_be_bytes()[1..]);
            tag.extend_from_slice(data);
            frames.push((VIDEO, dts, tag));
        } else if stream.index() == ai {
            let mut tag = vec![0xaf, 1];
            tag.extend_from_slice(data);
            frames.push((AUDIO, ms(pts, atb), tag));
        }
    }
    // B-frames put the first decode times below 0; a publisher's clock starts at 0.
    let first = frames.iter().map(|f| f.1).min().unwrap_or(0);
    let mut sequence_start = vec![0x90];
    sequence_start.extend_from_slice(b"hvc1");
    sequence_start.extend_from_slice(&hvcc);
    let mut tags = vec![(VIDEO, 0, sequence_start), (AUDIO, 0, [&[0xaf, 0][..], &asc].concat())];
    frames.sort_by_key(|f| f.1);
    tags.extend(frames.into_iter().map(|(t, ts, data)| (t, (ts - first) as u32, data)));
    tags
}
