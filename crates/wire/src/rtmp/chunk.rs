//! The RTMP chunk stream (RTMP 1.0 specification, section 5.3): messages cut into chunks of the sender's
//! chunk size, chunks of several chunk streams interleaved, four header types that each leave out what the
//! previous message on the same chunk stream had. Pure: bytes in, in any pieces, whole messages out.
//!
//! Header semantics follow libavformat's rtmppkt.c, which every publisher we know is written against: a
//! type-3 header that starts a message repeats the previous delta (or, after a type-0 header, adds its
//! absolute timestamp again), and an extended timestamp is repeated in every chunk of a message that has one.

use thiserror::Error;

/// The chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size a Set Chunk Size message may set (the top bit must be 0).
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;
/// Largest message the 24-bit length field can declare.
pub const MAX_MESSAGE_LEN: u32 = 0x00ff_ffff;
/// Chunk streams one connection may use; publishers use three to five.
const MAX_CHUNK_STREAMS: usize = 64;
/// A timestamp field of all ones: the real value follows in four more bytes.
const EXTENDED: u32 = 0x00ff_ffff;
/// Longest chunk header: 3-byte basic header, 11-byte message header, 4-byte extended timestamp.
const MAX_HEADER_LEN: usize = 18;

/// Message type: Set Chunk Size.
pub const SET_CHUNK_SIZE: u8 = 1;
/// Message type: Abort Message.
pub const ABORT: u8 = 2;

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Chunk stream it came on.
    pub csid: u32,
    /// Message type id (8 audio, 9 video, 20 command, ...).
    pub type_id: u8,
    /// Message stream id (0 for the connection, 1 and up for streams made by createStream).
    pub stream_id: u32,
    /// Timestamp in milliseconds.
    pub timestamp: u32,
    /// The message body.
    pub payload: Vec<u8>,
}

/// Why the chunk stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// A header that leaves fields out on a chunk stream that never had them.
    #[error("chunk stream {0} continues a message header it never sent")]
    NoHeader(u32),
    /// A message longer than allowed at this point of the session.
    #[error("a message of {len} bytes is over the limit of {limit} bytes")]
    TooLong {
        /// Declared length.
        len: u32,
        /// The limit.
        limit: u32,
    },
    /// A message in progress whose length changes in a later chunk.
    #[error("chunk stream {csid} changed the length of a message in progress from {from} to {to} bytes")]
    LengthChanged {
        /// Chunk stream.
        csid: u32,
        /// Length declared first.
        from: u32,
        /// Length declared later.
        to: u32,
    },
    /// More chunk streams than any publisher uses.
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyStreams,
    /// More bytes held in unfinished messages than allowed.
    #[error("more than {0} bytes held in unfinished messages")]
    TooMuchBuffered(usize),
    /// A Set Chunk Size of 0 or with the top bit set.
    #[error("chunk size {0} is out of range (1 to 2147483647)")]
    BadChunkSize(u32),
    /// A protocol control message too short for its type.
    #[error("protocol control message of type {0} is too short")]
    ShortControl(u8),
}

/// What the previous message on a chunk stream left for the headers that follow.
#[derive(Debug, Clone, Default)]
struct Previous {
    /// Absolute timestamp of the last message started.
    timestamp: u32,
    /// The last timestamp field read: absolute after type 0, a delta after types 1 and 2 (`EXTENDED` when the
    /// real value came in the extended field).
    ts_field: u32,
    /// The value the last timestamp field stood for (the extended one when there was one).
    ts_value: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The message being read on this chunk stream, if one is in progress.
    partial: Option<Vec<u8>>,
}

/// A parsed chunk header.
struct Header {
    fmt: u8,
    csid: u32,
    /// Timestamp field (types 0 to 2).
    ts_field: Option<u32>,
    length: Option<u32>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
    /// The extended timestamp, when the field says one follows.
    extended: Option<u32>,
    /// Bytes the header took.
    len: usize,
}

/// Reads messages out of a chunk stream fed in arbitrary pieces; handles Set Chunk Size and Abort itself,
/// since they change how the very next bytes are read.
#[derive(Debug)]
pub struct ChunkReader {
    chunk_size: u32,
    max_message: u32,
    max_buffered: usize,
    buffered: usize,
    /// Per chunk stream; a handful, so a list beats a map.
    streams: Vec<(u32, Previous)>,
    /// Bytes of a header not complete yet.
    header: Vec<u8>,
    /// Inside a chunk's payload: its chunk stream and the bytes still to come.
    in_payload: Option<(u32, usize)>,
}

impl ChunkReader {
    /// A reader taking messages up to `max_message` bytes and holding at most `max_buffered` bytes of
    /// unfinished messages.
    pub fn new(max_message: u32, max_buffered: usize) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message: max_message.min(MAX_MESSAGE_LEN),
            max_buffered,
            buffered: 0,
            streams: Vec::new(),
            header: Vec::with_capacity(MAX_HEADER_LEN),
            in_payload: None,
        }
    }

    /// Changes the limits (a verified publisher may send media messages far larger than commands).
    pub fn set_limits(&mut self, max_message: u32, max_buffered: usize) {
        self.max_message = max_message.min(MAX_MESSAGE_LEN);
        self.max_buffered = max_buffered;
    }

    /// The chunk size the peer set.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Reads what `bytes` completes; whole messages are appended to `out` in the order they complete.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Message>) -> Result<(), ChunkError> {
        while !bytes.is_empty() {
            if let Some((csid, left)) = self.in_payload {
                let n = left.min(bytes.len());
                let (piece, rest) = bytes.split_at(n);
                bytes = rest;
                self.buffered += n;
                if self.buffered > self.max_buffered {
                    return Err(ChunkError::TooMuchBuffered(self.max_buffered));
                }
                let prev = self.stream_mut(csid).ok_or(ChunkError::NoHeader(csid))?;
                let partial = prev.partial.get_or_insert_with(Vec::new);
                partial.extend_from_slice(piece);
                let complete = partial.len() == prev.length as usize;
                self.in_payload = (left > n).then_some((csid, left - n));
                if complete {
                    self.complete(csid, out)?;
                }
                continue;
            }
            let old = self.header.len();
            let take = (MAX_HEADER_LEN - old).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            let Some(header) = self.parse_header()? else {
                bytes = &bytes[take..];
                continue;
            };
            bytes = &bytes[header.len - old..];
            self.header.clear();
            self.start_chunk(header, out)?;
        }
        Ok(())
    }

    fn stream(&self, csid: u32) -> Option<&Previous> {
        self.streams.iter().find(|(c, _)| *c == csid).map(|(_, p)| p)
    }

    fn stream_mut(&mut self, csid: u32) -> Option<&mut Previous> {
        self.streams.iter_mut().find(|(c, _)| *c == csid).map(|(_, p)| p)
    }

    /// The header at the start of `self.header`, if it is all there.
    fn parse_header(&self) -> Result<Option<Header>, ChunkError> {
        let buf = &self.header;
        let Some(&first) = buf.first() else { return Ok(None) };
        let fmt = first >> 6;
        let (csid, mut at) = match first & 0x3f {
            0 => match buf.get(1) {
                Some(&b) => (64 + u32::from(b), 2),
                None => return Ok(None),
            },
            1 => match (buf.get(1), buf.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + u32::from(lo) + 256 * u32::from(hi), 3),
                _ => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let prev = self.stream(csid);
        if fmt != 0 && prev.is_none() {
            return Err(ChunkError::NoHeader(csid));
        }
        let fields = [11, 7, 3, 0][usize::from(fmt)];
        let Some(f) = buf.get(at..at + fields) else { return Ok(None) };
        let u24 = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let ts_field = (fmt < 3).then(|| u24(&f[0..3]));
        let length = (fmt < 2).then(|| u24(&f[3..6]));
        let type_id = (fmt < 2).then(|| f[6]);
        let stream_id = (fmt == 0).then(|| u32::from_le_bytes([f[7], f[8], f[9], f[10]]));
        at += fields;
        let field = ts_field.or(prev.map(|p| p.ts_field)).unwrap_or(0);
        let extended = if field == EXTENDED {
            let Some(e) = buf.get(at..at + 4) else { return Ok(None) };
            at += 4;
            Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
        } else {
            None
        };
        Ok(Some(Header { fmt, csid, ts_field, length, type_id, stream_id, extended, len: at }))
    }

    fn start_chunk(&mut self, h: Header, out: &mut Vec<Message>) -> Result<(), ChunkError> {
        let at = match self.streams.iter().position(|(c, _)| *c == h.csid) {
            Some(at) => at,
            None if self.streams.len() >= MAX_CHUNK_STREAMS => return Err(ChunkError::TooManyStreams),
            None => {
                self.streams.push((h.csid, Previous::default()));
                self.streams.len() - 1
            }
        };
        let prev = &mut self.streams[at].1;
        let length = h.length.unwrap_or(prev.length);
        if let Some(partial) = &prev.partial {
            // A continuation: the message keeps its timestamp; its length cannot change on the way.
            if length != prev.length {
                return Err(ChunkError::LengthChanged { csid: h.csid, from: prev.length, to: length });
            }
            let left = prev.length as usize - partial.len();
            self.in_payload = Some((h.csid, left.min(self.chunk_size as usize)));
            return Ok(());
        }
        if length > self.max_message {
            return Err(ChunkError::TooLong { len: length, limit: self.max_message });
        }
        let ts_field = h.ts_field.unwrap_or(prev.ts_field);
        let value = h.extended.unwrap_or(ts_field);
        prev.timestamp = if h.fmt == 0 { value } else { prev.timestamp.wrapping_add(value) };
        prev.ts_field = ts_field;
        prev.ts_value = value;
        prev.length = length;
        prev.type_id = h.type_id.unwrap_or(prev.type_id);
        prev.stream_id = h.stream_id.unwrap_or(prev.stream_id);
        prev.partial = Some(Vec::new());
        if length == 0 {
            return self.complete(h.csid, out);
        }
        self.in_payload = Some((h.csid, (length as usize).min(self.chunk_size as usize)));
        Ok(())
    }

    /// A message is whole: protocol control that changes the reading is applied, the rest goes out.
    fn complete(&mut self, csid: u32, out: &mut Vec<Message>) -> Result<(), ChunkError> {
        let Some(prev) = self.stream_mut(csid) else { return Err(ChunkError::NoHeader(csid)) };
        let payload = prev.partial.take().unwrap_or_default();
        let message =
            Message { csid, type_id: prev.type_id, stream_id: prev.stream_id, timestamp: prev.timestamp, payload };
        self.buffered -= message.payload.len();
        match message.type_id {
            SET_CHUNK_SIZE => {
                let size = control_u32(&message)?;
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(ChunkError::BadChunkSize(size));
                }
                self.chunk_size = size;
            }
            ABORT => {
                let aborted = control_u32(&message)?;
                // Between chunks (where this message ended) no payload is in progress.
                if let Some(partial) = self.stream_mut(aborted).and_then(|p| p.partial.take()) {
                    self.buffered -= partial.len();
                }
            }
            _ => out.push(message),
        }
        Ok(())
    }
}

/// The 4-byte value of a Set Chunk Size or Abort message.
fn control_u32(m: &Message) -> Result<u32, ChunkError> {
    match m.payload.get(..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(ChunkError::ShortControl(m.type_id)),
    }
}

/// What the last message written on a chunk stream leaves for the next header.
#[derive(Debug, Clone, Copy)]
struct Sent {
    timestamp: u32,
    ts_value: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Writes messages as chunks, with the most compact header each allows (as libavformat's writer does).
#[derive(Debug)]
pub struct ChunkWriter {
    chunk_size: u32,
    sent: Vec<(u32, Sent)>,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new(DEFAULT_CHUNK_SIZE)
    }
}

impl ChunkWriter {
    /// A writer cutting chunks of `chunk_size` bytes (announce it with a Set Chunk Size message first).
    pub fn new(chunk_size: u32) -> Self {
        Self { chunk_size: chunk_size.clamp(1, MAX_CHUNK_SIZE), sent: Vec::new() }
    }

    /// The size chunks are cut to.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Cuts the following messages into chunks of `chunk_size`.
    pub fn set_chunk_size(&mut self, chunk_size: u32) {
        self.chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Appends `m` as chunks (its length must fit the 24-bit field).
    pub fn write(&mut self, out: &mut Vec<u8>, m: &Message) {
        for chunk in self.chunks(m) {
            out.extend_from_slice(&chunk);
        }
    }

    /// `m` as chunks, each one apart (chunks of other chunk streams may go between them).
    pub fn chunks(&mut self, m: &Message) -> Vec<Vec<u8>> {
        let length = m.payload.len() as u32;
        let prev = self.sent.iter().find(|(c, _)| *c == m.csid).map(|(_, s)| *s);
        let delta = prev.map(|p| m.timestamp.wrapping_sub(p.timestamp));
        let (fmt, value) = match prev {
            Some(p) if p.stream_id == m.stream_id && m.timestamp >= p.timestamp => {
                let delta = delta.unwrap_or(0);
                if p.type_id != m.type_id || p.length != length {
                    (1, delta)
                } else if delta != p.ts_value {
                    (2, delta)
                } else {
                    (3, delta)
                }
            }
            _ => (0, m.timestamp),
        };
        let field = value.min(EXTENDED);
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        basic_header(&mut out, fmt, m.csid);
        if fmt < 3 {
            out.extend_from_slice(&field.to_be_bytes()[1..]);
        }
        if fmt < 2 {
            out.extend_from_slice(&length.to_be_bytes()[1..]);
            out.push(m.type_id);
        }
        if fmt == 0 {
            out.extend_from_slice(&m.stream_id.to_le_bytes());
        }
        // After a type-3 header the reader reuses the previous field; it decides whether 4 more bytes follow.
        let extended = if fmt == 3 { prev.is_some_and(|p| p.ts_value >= EXTENDED) } else { field == EXTENDED };
        if extended {
            out.extend_from_slice(&value.to_be_bytes());
        }
        let mut chunks = Vec::new();
        for (i, piece) in m.payload.chunks(self.chunk_size as usize).enumerate() {
            if i > 0 {
                basic_header(&mut out, 3, m.csid);
                if extended {
                    out.extend_from_slice(&value.to_be_bytes());
                }
            }
            out.extend_from_slice(piece);
            chunks.push(std::mem::take(&mut out));
        }
        if m.payload.is_empty() {
            chunks.push(out);
        }
        let ts_value = if fmt == 3 { prev.map_or(value, |p| p.ts_value) } else { value };
        let sent = Sent { timestamp: m.timestamp, ts_value, length, type_id: m.type_id, stream_id: m.stream_id };
        match self.sent.iter_mut().find(|(c, _)| *c == m.csid) {
            Some((_, s)) => *s = sent,
            None => self.sent.push((m.csid, sent)),
        }
        chunks
    }
}

/// The 1-, 2- or 3-byte basic header.
fn basic_header(out: &mut Vec<u8>, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.push(fmt << 6 | csid as u8),
        64..=319 => out.extend_from_slice(&[fmt << 6, (csid - 64) as u8]),
        _ => {
            let rest = csid.saturating_sub(64).min(0xffff) as u16;
            out.push(fmt << 6 | 1);
            out.extend_from_slice(&rest.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(csid: u32, type_id: u8, timestamp: u32, len: usize) -> Message {
        Message {
            csid,
            type_id,
            stream_id: 1,
            timestamp,
            payload: (0..len).map(|i| (i * 7 + csid as usize) as u8).collect(),
        }
    }

    fn read_all(bytes: &[u8], step: usize) -> Result<Vec<Message>, ChunkError> {
        let mut reader = ChunkReader::new(MAX_MESSAGE_LEN, 64 << 20);
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            reader.push(piece, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn every_header_type_round_trips_in_any_pieces() {
        // Same length and type and delta (type 3), a new delta (2), a new length (1), another stream (0),
        // extended timestamps, chunk streams in all three basic-header forms, and an empty message.
        let messages = vec![
            message(4, 9, 0, 300),
            message(4, 9, 33, 300),
            message(4, 9, 66, 300),
            message(4, 9, 100, 300),
            message(4, 9, 133, 10),
            message(70, 8, 140, 5),
            message(400, 8, 0x0100_0000, 200),
            message(400, 8, 0x0100_0400, 200),
            message(400, 8, 0x0100_0800, 200),
            message(5, 18, 150, 0),
        ];
        let mut writer = ChunkWriter::new(128);
        let mut bytes = Vec::new();
        for m in &messages {
            writer.write(&mut bytes, m);
        }
        for step in [1, 2, 3, 17, 128, 129, bytes.len()] {
            assert_eq!(read_all(&bytes, step).unwrap(), messages, "pieces of {step}");
        }
    }

    #[test]
    fn set_chunk_size_applies_from_the_next_chunk_and_abort_drops_a_message_in_progress() {
        let mut writer = ChunkWriter::new(128);
        let mut bytes = Vec::new();
        let set = Message { csid: 2, type_id: SET_CHUNK_SIZE, stream_id: 0, timestamp: 0, payload: vec![0, 0, 0, 3] };
        writer.write(&mut bytes, &set);
        writer.set_chunk_size(3);
        let big = message(6, 9, 10, 10);
        writer.write(&mut bytes, &big);
        // Half a message on chunk stream 7, then an abort of it, then a whole one on 7 again.
        let mut half = Vec::new();
        let mut other = ChunkWriter::new(3);
        other.write(&mut half, &message(7, 8, 0, 9));
        bytes.extend_from_slice(&half[..12 + 3 + 1 + 3]);
        let abort = Message { csid: 2, type_id: ABORT, stream_id: 0, timestamp: 0, payload: vec![0, 0, 0, 7] };
        writer.write(&mut bytes, &abort);
        let after = message(7, 8, 20, 4);
        let mut fresh = ChunkWriter::new(3);
        fresh.write(&mut bytes, &after);
        assert_eq!(read_all(&bytes, 1).unwrap(), vec![big.clone(), after.clone()]);
        assert_eq!(read_all(&bytes, bytes.len()).unwrap(), vec![big, after]);
    }

    #[test]
    fn hostile_chunk_streams_are_refused() {
        // A type-3 header on a chunk stream never seen.
        assert_eq!(read_all(&[0xc5, 1, 2], 1), Err(ChunkError::NoHeader(5)));
        // A declared length over the limit is refused at its header, before any of it is held.
        let mut reader = ChunkReader::new(1000, 10_000);
        let header = [0x05, 0, 0, 0, 0x00, 0x10, 0x00, 9, 1, 0, 0, 0];
        assert_eq!(reader.push(&header, &mut Vec::new()), Err(ChunkError::TooLong { len: 4096, limit: 1000 }));
        // Chunk size 0, or with the top bit set.
        for size in [0u32, 0x8000_0000] {
            let mut bytes = Vec::new();
            let m = Message {
                csid: 2,
                type_id: SET_CHUNK_SIZE,
                stream_id: 0,
                timestamp: 0,
                payload: size.to_be_bytes().to_vec(),
            };
            ChunkWriter::default().write(&mut bytes, &m);
            assert_eq!(read_all(&bytes, 1), Err(ChunkError::BadChunkSize(size)));
        }
        // Many chunk streams each holding an unfinished message.
        let mut bytes = Vec::new();
        for csid in 3..200 {
            // The first chunk of each: 128 of 1000 bytes.
            bytes.extend_from_slice(&ChunkWriter::new(128).chunks(&message(csid, 9, 0, 1000))[0]);
        }
        assert_eq!(read_all(&bytes, 4096), Err(ChunkError::TooManyStreams));
        let mut reader = ChunkReader::new(MAX_MESSAGE_LEN, 5_000);
        assert_eq!(reader.push(&bytes, &mut Vec::new()), Err(ChunkError::TooMuchBuffered(5_000)));
        // A continuation that changes the length of the message it continues.
        let mut bytes = Vec::new();
        let mut w = ChunkWriter::new(128);
        w.write(&mut bytes, &message(4, 9, 0, 200));
        bytes.truncate(12 + 128);
        bytes.extend_from_slice(&[0x44, 0, 0, 1, 0, 0, 50, 9]);
        assert_eq!(read_all(&bytes, 7), Err(ChunkError::LengthChanged { csid: 4, from: 200, to: 50 }));
    }
}
