//! The RTMP endpoint's own server side. The relay speaks RTMP with the publisher itself — handshake,
//! `connect`, `releaseStream`, `FCPublish`, `createStream`, `publish` — and checks the publish name against
//! the stream key on the reassembled command, whatever chunk size, header types or chunk-stream interleaving
//! the publisher uses. Only a verified publisher's audio, video and metadata go on, as an FLV byte stream, to
//! libavformat; libavformat never sees an RTMP byte, a command, or a key.
//!
//! Pure: [`PublishSession`] takes the publisher's bytes in any pieces and returns what to answer and what
//! to hand on. The sockets, the deadline and the one-publisher slot are in `server::ingest`.

pub mod amf0;
pub mod chunk;
pub mod flv;
pub mod matroska;
pub mod remux;

use amf0::{AmfError, Value};
use chunk::{ChunkError, ChunkReader, ChunkWriter, Message};
use std::collections::VecDeque;
use thiserror::Error;

/// C1 and C2 (and S1, S2): the handshake's random-filled blocks.
const HANDSHAKE_BLOCK: usize = 1536;
/// S1's 1528 bytes after its time and zero fields: any bytes do.
const S1_FILLER: [u8; HANDSHAKE_BLOCK - 8] = {
    let mut filler = [0u8; HANDSHAKE_BLOCK - 8];
    let mut i = 0;
    while i < filler.len() {
        filler[i] = (i.wrapping_mul(151) >> 3) as u8;
        i += 1;
    }
    filler
};
/// The only plain RTMP version (6 would be RTMPE, which this server does not speak).
const RTMP_VERSION: u8 = 3;
/// Largest message before the key is verified: commands are a few hundred bytes.
pub const COMMAND_MAX_BYTES: u32 = 64 * 1024;
/// Bytes held in unfinished messages before the key is verified.
const COMMAND_MAX_BUFFERED: usize = 256 * 1024;
/// Held in unfinished messages while publishing: a keyframe of a 4K stream is a few MB.
const MEDIA_MAX_BUFFERED: usize = 32 << 20;
/// Messages held while the caller decides about a verified publish (a publisher that does not wait for
/// the answer sends its first media right away).
const MAX_HELD_MESSAGES: usize = 1024;
/// Streams one connection may create; publishers create one.
const MAX_CREATED_STREAMS: u32 = 4;
/// The acknowledgement window and peer bandwidth this server announces, as libavformat's does.
const WINDOW: u32 = 2_500_000;
/// The chunk size this server writes with.
const OUT_CHUNK_SIZE: u32 = 4096;

// Message types (RTMP 1.0 specification, sections 5.4, 6.2 and 7.1).
const ACK: u8 = 3;
const USER_CONTROL: u8 = 4;
const WINDOW_ACK_SIZE: u8 = 5;
const SET_PEER_BANDWIDTH: u8 = 6;
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
const AMF3_DATA: u8 = 15;
const AMF3_COMMAND: u8 = 17;
const AMF0_DATA: u8 = 18;
const AMF0_COMMAND: u8 = 20;
const AGGREGATE: u8 = 22;

// Chunk streams this server writes on: protocol control, and command replies.
const CONTROL_CSID: u32 = 2;
const COMMAND_CSID: u32 = 3;

/// Why a publisher's session ended or was refused. Texts from the publisher are never in it: a wrong name
/// may be another endpoint's key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtmpError {
    /// The first byte is not RTMP's version 3.
    #[error("not an RTMP client (handshake version {0})")]
    Version(u8),
    /// The chunk stream cannot be read.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A command's AMF0 cannot be read.
    #[error("unreadable command: {0}")]
    Amf(#[from] AmfError),
    /// A command that needs the stream key named another stream.
    #[error("wrong stream key in {command} ({len} characters)")]
    WrongKey {
        /// `publish`, `FCPublish` or `releaseStream`.
        command: &'static str,
        /// Length of the name it gave.
        len: usize,
    },
    /// Something that needs a verified publish came before one.
    #[error("{0} before a publish with the stream key")]
    BeforePublish(&'static str),
    /// A command other than `connect` came first.
    #[error("a command came before connect")]
    NoConnect,
    /// A message that is not laid out as RTMP clients write it.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Something a publisher never sends: playing, shared objects, AMF3 objects, streams galore.
    #[error("not taken from a publisher: {0}")]
    Unsupported(&'static str),
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for C0 and C1.
    Hello,
    /// S0, S1 and S2 sent; waiting for C2.
    Echo,
    /// Waiting for `connect`.
    Connecting,
    /// Connected; `publish` not verified yet.
    Connected,
    /// `publish` verified; the caller decides whether the publisher may have the endpoint (messages after it
    /// are held until then).
    Pending {
        /// Message stream of the publish.
        stream_id: u32,
    },
    /// Media flows.
    Publishing,
    /// The publisher ended its stream (`FCUnpublish`, `deleteStream`, `closeStream`).
    Ended,
}

/// What one call of [`PublishSession::push`] produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Bytes to send back to the publisher.
    pub reply: Vec<u8>,
    /// FLV bytes for libavformat (only once publishing).
    pub media: Vec<u8>,
    /// A publish with the right key arrived: call [`PublishSession::accept`] or [`PublishSession::refuse`].
    pub publish: bool,
    /// The publisher ended its stream; close after sending `reply`.
    pub ended: bool,
}

/// One publisher's RTMP session, seen from the server.
#[derive(Debug)]
pub struct PublishSession {
    key: Option<String>,
    phase: Phase,
    /// Handshake bytes collected so far (C0 and C1, then C2).
    handshake: Vec<u8>,
    reader: ChunkReader,
    writer: ChunkWriter,
    /// Bytes received, for acknowledgements.
    received: u64,
    /// Acknowledge every this many bytes, once the publisher asked for it.
    ack_window: Option<u32>,
    acked: u64,
    created: u32,
    /// Messages read but not acted on yet: those after a publish, until the caller answers it.
    held: VecDeque<Message>,
    /// FLV or Matroska, decided by the first video tag, and the tags that wait for that.
    remux: remux::Remux,
    held_tags: Vec<(u8, u32, Vec<u8>)>,
}

impl PublishSession {
    /// A session that lets through only a publish named `key` (`None`: any name, for a loopback endpoint).
    pub fn new(key: Option<&str>) -> Self {
        Self {
            key: key.map(str::to_string),
            phase: Phase::Hello,
            handshake: Vec::new(),
            reader: ChunkReader::new(COMMAND_MAX_BYTES, COMMAND_MAX_BUFFERED),
            writer: ChunkWriter::default(),
            received: 0,
            ack_window: None,
            acked: 0,
            created: 0,
            held: VecDeque::new(),
            remux: remux::Remux::default(),
            held_tags: Vec::new(),
        }
    }

    /// Whether media flows.
    pub fn is_publishing(&self) -> bool {
        self.phase == Phase::Publishing
    }

    /// Takes the publisher's bytes and returns what to answer and hand on.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Output, RtmpError> {
        let mut out = Output::default();
        self.received += bytes.len() as u64;
        let bytes = match self.phase {
            Phase::Hello | Phase::Echo => self.handshake(bytes, &mut out)?,
            Phase::Ended => return Ok(out),
            _ => bytes,
        };
        let mut messages = Vec::new();
        self.reader.push(bytes, &mut messages)?;
        self.held.extend(messages);
        let was_pending = matches!(self.phase, Phase::Pending { .. });
        self.run_held(&mut out)?;
        out.publish = !was_pending && matches!(self.phase, Phase::Pending { .. });
        if let Some(window) = self.ack_window {
            if self.received - self.acked >= u64::from(window) {
                self.acked = self.received;
                self.control(&mut out.reply, ACK, &(self.received as u32).to_be_bytes());
            }
        }
        Ok(out)
    }

    /// Lets the verified publisher in: its `onStatus(NetStream.Publish.Start)`, and whatever it sent
    /// after the publish without waiting for that.
    pub fn accept(&mut self) -> Result<Output, RtmpError> {
        let mut out = Output::default();
        if let Phase::Pending { stream_id } = self.phase {
            self.phase = Phase::Publishing;
            self.reader.set_limits(chunk::MAX_MESSAGE_LEN, MEDIA_MAX_BUFFERED);
            let mut begin = vec![0, 0];
            begin.extend_from_slice(&stream_id.to_be_bytes());
            self.control(&mut out.reply, USER_CONTROL, &begin);
            self.status(&mut out.reply, stream_id, "status", "NetStream.Publish.Start", "publishing");
            self.run_held(&mut out)?;
        }
        Ok(out)
    }

    /// Acts on held messages until a publish waits for an answer or the stream ends.
    fn run_held(&mut self, out: &mut Output) -> Result<(), RtmpError> {
        while !matches!(self.phase, Phase::Pending { .. } | Phase::Ended) {
            let Some(m) = self.held.pop_front() else { break };
            self.message(m, out)?;
        }
        if self.held.len() > MAX_HELD_MESSAGES {
            return Err(RtmpError::Malformed("flood of messages before the publish was answered"));
        }
        if self.phase == Phase::Ended {
            out.ended = true;
            self.held.clear();
        }
        Ok(())
    }

    /// What to send a publisher before closing its connection: an error status it can show (ffmpeg prints
    /// `Server error: <description>`).
    pub fn refuse(&mut self, description: &str) -> Vec<u8> {
        let mut reply = Vec::new();
        let stream_id = match self.phase {
            Phase::Pending { stream_id } => stream_id,
            _ => 0,
        };
        if !matches!(self.phase, Phase::Hello | Phase::Echo) {
            self.status(&mut reply, stream_id, "error", "NetStream.Publish.BadName", description);
        }
        reply
    }

    /// C0+C1 answered with S0+S1+S2, then C2 taken; returns the bytes after the handshake.
    fn handshake<'a>(&mut self, bytes: &'a [u8], out: &mut Output) -> Result<&'a [u8], RtmpError> {
        if let (Phase::Hello, true, Some(&version)) = (self.phase, self.handshake.is_empty(), bytes.first()) {
            if version != RTMP_VERSION {
                return Err(RtmpError::Version(version));
            }
        }
        let need = match self.phase {
            Phase::Hello => 1 + HANDSHAKE_BLOCK,
            _ => HANDSHAKE_BLOCK,
        };
        let take = (need - self.handshake.len()).min(bytes.len());
        self.handshake.extend_from_slice(&bytes[..take]);
        let rest = &bytes[take..];
        if self.handshake.len() < need {
            return Ok(rest);
        }
        match self.phase {
            Phase::Hello => {
                out.reply.push(RTMP_VERSION);
                // S1: time 0, zero, then filler; a publisher echoes it in C2 and checks nothing of it.
                out.reply.extend_from_slice(&[0; 8]);
                out.reply.extend_from_slice(&S1_FILLER);
                // S2: C1 echoed.
                out.reply.extend_from_slice(&self.handshake[1..]);
                self.phase = Phase::Echo;
                self.handshake.clear();
                self.handshake(rest, out)
            }
            _ => {
                self.phase = Phase::Connecting;
                self.handshake = Vec::new();
                Ok(rest)
            }
        }
    }

    fn message(&mut self, m: Message, out: &mut Output) -> Result<(), RtmpError> {
        match m.type_id {
            ACK | SET_PEER_BANDWIDTH => Ok(()),
            WINDOW_ACK_SIZE => {
                let window = m.payload.get(..4).ok_or(RtmpError::Malformed("window acknowledgement size"))?;
                let window = u32::from_be_bytes([window[0], window[1], window[2], window[3]]);
                self.ack_window = (window > 0).then_some(window);
                Ok(())
            }
            USER_CONTROL => self.user_control(&m, out),
            AMF0_COMMAND => self.command(&m.payload, m.stream_id, out),
            AMF3_COMMAND => self.command(amf3_body(&m.payload)?, m.stream_id, out),
            AMF0_DATA => self.data(m.timestamp, &m.payload, out),
            AMF3_DATA => self.data(m.timestamp, amf3_body(&m.payload)?, out),
            AUDIO | VIDEO => {
                if self.phase != Phase::Publishing {
                    return Err(RtmpError::BeforePublish("media"));
                }
                self.media(m.type_id, m.timestamp, &m.payload, out)
            }
            AGGREGATE => {
                if self.phase != Phase::Publishing {
                    return Err(RtmpError::BeforePublish("media"));
                }
                let tags = flv::tags(&m.payload).ok_or(RtmpError::Malformed("aggregate message"))?;
                let first = tags.first().map_or(0, |t| t.timestamp_ms);
                for t in tags {
                    if !matches!(t.tag_type, flv::AUDIO | flv::VIDEO | flv::SCRIPT) {
                        return Err(RtmpError::Malformed("aggregate message"));
                    }
                    let ts = m.timestamp.wrapping_add(t.timestamp_ms.wrapping_sub(first));
                    self.media(t.tag_type, ts, t.data, out)?;
                }
                Ok(())
            }
            _ => Err(RtmpError::Unsupported("shared objects and unknown message types")),
        }
    }

    fn user_control(&mut self, m: &Message, out: &mut Output) -> Result<(), RtmpError> {
        let event = m.payload.get(..2).ok_or(RtmpError::Malformed("user control message"))?;
        // A ping request (6) is answered with a ping response (7) carrying its timestamp.
        if event == [0, 6] {
            let stamp = m.payload.get(2..6).ok_or(RtmpError::Malformed("ping"))?;
            let mut pong = vec![0, 7];
            pong.extend_from_slice(stamp);
            self.control(&mut out.reply, USER_CONTROL, &pong);
        }
        Ok(())
    }

    fn command(&mut self, body: &[u8], stream_id: u32, out: &mut Output) -> Result<(), RtmpError> {
        let values = amf0::decode_all(body)?;
        let name = values.first().and_then(Value::as_str).ok_or(RtmpError::Malformed("command"))?;
        let txn = values.get(1).and_then(Value::as_number).unwrap_or(0.0);
        if self.phase == Phase::Connecting {
            if name != "connect" {
                return Err(RtmpError::NoConnect);
            }
            self.connected(txn, &mut out.reply);
            self.phase = Phase::Connected;
            return Ok(());
        }
        match name {
            "releaseStream" | "FCPublish" => {
                let command = if name == "FCPublish" { "FCPublish" } else { "releaseStream" };
                // Answered, and nothing more: publishing starts only with a verified publish.
                self.check_name(command, values.get(3))?;
                self.result(&mut out.reply, txn, None);
                Ok(())
            }
            "createStream" => {
                if self.created >= MAX_CREATED_STREAMS {
                    return Err(RtmpError::Unsupported("more than a few streams"));
                }
                self.created += 1;
                let id = self.created;
                self.result(&mut out.reply, txn, Some(Value::Number(f64::from(id))));
                Ok(())
            }
            "publish" => {
                if self.phase != Phase::Connected {
                    return Err(RtmpError::Unsupported("a second publish"));
                }
                self.check_name("publish", values.get(3))?;
                self.phase = Phase::Pending { stream_id };
                Ok(())
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                if self.phase == Phase::Publishing {
                    self.phase = Phase::Ended;
                }
                Ok(())
            }
            "play" | "play2" => Err(RtmpError::Unsupported("playing")),
            // `_checkbw`, `getStreamLength` and other calls a publisher may make: nothing to answer.
            _ => Ok(()),
        }
    }

    /// Checks a stream name against the key (in constant time).
    fn check_name(&self, command: &'static str, name: Option<&Value>) -> Result<(), RtmpError> {
        let name = name.and_then(Value::as_str).ok_or(RtmpError::Malformed("stream name"))?;
        match &self.key {
            Some(key) if !constant_time_eq(name.as_bytes(), key.as_bytes()) => {
                Err(RtmpError::WrongKey { command, len: name.len() })
            }
            _ => Ok(()),
        }
    }

    /// Data messages: metadata goes on with the media once publishing; before that nothing is handed on.
    fn data(&mut self, timestamp: u32, body: &[u8], out: &mut Output) -> Result<(), RtmpError> {
        if self.phase != Phase::Publishing {
            return Ok(());
        }
        // `@setDataFrame` wraps what a file would hold as its onMetaData tag.
        let body = match amf0::decode_one(body) {
            Ok((Value::String(s), used)) if s == "@setDataFrame" => &body[used..],
            _ => body,
        };
        if let Ok(values) = amf0::decode_all(body) {
            if values.first().and_then(Value::as_str) == Some("onMetaData") {
                if let Some(props) = values.get(1) {
                    self.remux.metadata((props.get("audiocodecid").is_some(), props.get("videocodecid").is_some()));
                }
            }
        }
        self.media(flv::SCRIPT, timestamp, body, out)
    }

    /// A tag for libavformat: in FLV (whose header's flags come from the metadata, or else from the first
    /// audio or video tag, as libavformat's own RTMP server decides them), or in Matroska for enhanced RTMP.
    fn media(&mut self, tag_type: u8, timestamp: u32, data: &[u8], out: &mut Output) -> Result<(), RtmpError> {
        self.remux.tag(&mut self.held_tags, tag_type, timestamp, data, &mut out.media)
    }

    /// The replies to `connect`, as libavformat's RTMP server sends them.
    fn connected(&mut self, txn: f64, reply: &mut Vec<u8>) {
        self.control(reply, WINDOW_ACK_SIZE, &WINDOW.to_be_bytes());
        let mut bandwidth = WINDOW.to_be_bytes().to_vec();
        bandwidth.push(2); // dynamic
        self.control(reply, SET_PEER_BANDWIDTH, &bandwidth);
        self.control(reply, USER_CONTROL, &[0, 0, 0, 0, 0, 0]); // Stream Begin 0
        self.control(reply, chunk::SET_CHUNK_SIZE, &OUT_CHUNK_SIZE.to_be_bytes());
        self.writer.set_chunk_size(OUT_CHUNK_SIZE);
        let mut body = Vec::new();
        amf0::put_string(&mut body, "_result");
        amf0::put_number(&mut body, txn);
        amf0::put_object(
            &mut body,
            &[("fmsVer", Value::String("FMS/3,0,1,123".into())), ("capabilities", Value::Number(31.0))],
        );
        amf0::put_object(
            &mut body,
            &[
                ("level", Value::String("status".into())),
                ("code", Value::String("NetConnection.Connect.Success".into())),
                ("description", Value::String("Connection succeeded.".into())),
                ("objectEncoding", Value::Number(0.0)),
            ],
        );
        self.send(reply, COMMAND_CSID, AMF0_COMMAND, 0, body);
    }

    /// `_result` for a call, with a value or null.
    fn result(&mut self, reply: &mut Vec<u8>, txn: f64, value: Option<Value>) {
        let mut body = Vec::new();
        amf0::put_string(&mut body, "_result");
        amf0::put_number(&mut body, txn);
        amf0::put_null(&mut body);
        amf0::put(&mut body, &value.unwrap_or(Value::Undefined));
        self.send(reply, COMMAND_CSID, AMF0_COMMAND, 0, body);
    }

    /// `onStatus` on a stream.
    fn status(&mut self, reply: &mut Vec<u8>, stream_id: u32, level: &str, code: &str, description: &str) {
        let mut body = Vec::new();
        amf0::put_string(&mut body, "onStatus");
        amf0::put_number(&mut body, 0.0);
        amf0::put_null(&mut body);
        amf0::put_object(
            &mut body,
            &[
                ("level", Value::String(level.into())),
                ("code", Value::String(code.into())),
                ("description", Value::String(description.into())),
            ],
        );
        self.send(reply, COMMAND_CSID + 2, AMF0_COMMAND, stream_id, body);
    }

    fn control(&mut self, reply: &mut Vec<u8>, type_id: u8, payload: &[u8]) {
        self.send(reply, CONTROL_CSID, type_id, 0, payload.to_vec());
    }

    fn send(&mut self, reply: &mut Vec<u8>, csid: u32, type_id: u8, stream_id: u32, payload: Vec<u8>) {
        self.writer.write(reply, &Message { csid, type_id, stream_id, timestamp: 0, payload });
    }
}

/// The AMF0 body of an AMF3-typed message: a publisher that announced AMF3 still sends AMF0 after a 0 byte.
fn amf3_body(payload: &[u8]) -> Result<&[u8], RtmpError> {
    match payload.split_first() {
        Some((0, rest)) => Ok(rest),
        _ => Err(RtmpError::Unsupported("AMF3 values")),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal how much of a key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
