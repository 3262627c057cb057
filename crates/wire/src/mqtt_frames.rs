//! MQTT packets in a byte stream, as far as the gateway needs them: where each packet ends, its type, and
//! what a CONNECT asks for. Pure: bytes in, in any pieces (a WebSocket message need not hold whole packets).

use thiserror::Error;

/// Packet type of CONNECT.
pub const CONNECT: u8 = 1;

/// Why a stream of packets cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A remaining length of more than four bytes.
    #[error("malformed MQTT remaining length")]
    BadLength,
    /// A packet larger than allowed.
    #[error("an MQTT packet of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Declared size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The first packet of a connection is not CONNECT.
    #[error("the first MQTT packet is of type {0}, not CONNECT")]
    NotConnect(u8),
    /// A CONNECT that does not read as one.
    #[error("malformed CONNECT: {0}")]
    BadConnect(&'static str),
}

/// One whole packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Its type (1 CONNECT, 3 PUBLISH, 12 PINGREQ, ...).
    pub packet_type: u8,
    /// The four flag bits of the fixed header.
    pub flags: u8,
    /// The whole packet, fixed header included.
    pub bytes: Vec<u8>,
    /// Where the variable header starts in `bytes`.
    pub body_at: usize,
}

impl Packet {
    /// Everything after the fixed header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
    }
}

/// Cuts a byte stream into whole packets, holding at most one packet of `max_packet` bytes.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_packet: usize,
}

impl Framer {
    /// A framer taking packets of at most `max_packet` bytes.
    pub fn new(max_packet: usize) -> Self {
        Self { buf: Vec::new(), max_packet }
    }

    /// Appends `bytes`; the packets they complete go to `out`, in order.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Packet>) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((body_at, remaining)) = fixed_header(&self.buf[at..])? {
            let len = body_at + remaining;
            if len > self.max_packet {
                return Err(FrameError::TooLarge { len, limit: self.max_packet });
            }
            let Some(bytes) = self.buf.get(at..at + len) else { break };
            let first = bytes[0];
            out.push(Packet { packet_type: first >> 4, flags: first & 0x0f, bytes: bytes.to_vec(), body_at });
            at += len;
        }
        self.buf.drain(..at);
        // A declared size is checked as soon as the fixed header is in, before its bytes are held.
        if let Some((body_at, remaining)) = fixed_header(&self.buf)? {
            if body_at + remaining > self.max_packet {
                return Err(FrameError::TooLarge { len: body_at + remaining, limit: self.max_packet });
            }
        }
        Ok(())
    }
}

/// The fixed header at the start of `buf`: where the body starts and how long it is, once it is all there.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    if buf.len() > 4 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Packet type of PUBLISH.
pub const PUBLISH: u8 = 3;

/// What the gateway needs of a PUBLISH the broker sends: its topic, QoS and payload. `level` is the
/// protocol level of the connection (5 adds properties before the payload). `None` when it is not a
/// PUBLISH or does not read as one (it is then passed on as it is).
pub fn read_publish(packet: &Packet, level: u8) -> Option<(&str, u8, &[u8])> {
    if packet.packet_type != PUBLISH {
        return None;
    }
    let qos = (packet.flags >> 1) & 0x03;
    let body = packet.body();
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
    let mut at = 2 + len + if qos > 0 { 2 } else { 0 };
    if level == 5 {
        // Properties: a variable-length integer, then that many bytes.
        let (mut props, mut shift) = (0usize, 0);
        loop {
            let b = *body.get(at)?;
            at += 1;
            props |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return None;
            }
        }
        at = at.checked_add(props)?;
    }
    Some((topic, qos, body.get(at..)?))
}

/// What a CONNECT asks for, as far as the gateway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub level: u8,
    /// Keep-alive in seconds; 0 turns it off.
    pub keep_alive_secs: u16,
}

/// Reads a CONNECT's variable header.
pub fn read_connect(packet: &Packet) -> Result<Connect, FrameError> {
    if packet.packet_type != CONNECT {
        return Err(FrameError::NotConnect(packet.packet_type));
    }
    let body = packet.body();
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or(FrameError::BadConnect("no protocol name"))?,
        *body.get(1).ok_or(FrameError::BadConnect("no protocol name"))?,
    ]));
    let name = body.get(2..2 + name_len).ok_or(FrameError::BadConnect("protocol name cut short"))?;
    let rest = &body[2 + name_len..];
    let (&level, &keep_hi, &keep_lo) = match rest {
        [level, _flags, hi, lo, ..] => (level, hi, lo),
        _ => return Err(FrameError::BadConnect("variable header cut short")),
    };
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        _ => return Err(FrameError::BadConnect("not MQTT 3.1, 3.1.1 or 5")),
    }
    Ok(Connect { level, keep_alive_secs: u16::from_be_bytes([keep_hi, keep_lo]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT as MQTT.js sends it: MQTT 3.1.1, clean session, keep-alive 20, client id "page".
    const CONNECT_311: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x14\x00\x04page";

    fn frames(bytes: &[u8], step: usize, max: usize) -> Result<Vec<Packet>, FrameError> {
        let mut framer = Framer::new(max);
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            framer.push(piece, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn packets_come_out_whole_however_the_bytes_are_cut() {
        let mut stream = CONNECT_311.to_vec();
        stream.extend_from_slice(&[0xc0, 0x00]); // PINGREQ
        let mut publish = vec![0x30, 0x80, 0x01]; // PUBLISH with a 2-byte remaining length of 128
        publish.extend(std::iter::repeat_n(7u8, 128));
        stream.extend_from_slice(&publish);
        for step in [1, 2, 3, 17, stream.len()] {
            let packets = frames(&stream, step, 1024).unwrap();
            assert_eq!(packets.iter().map(|p| p.packet_type).collect::<Vec<_>>(), vec![1, 12, 3], "step {step}");
            assert_eq!(packets[2].bytes, publish);
            assert_eq!(packets[2].body().len(), 128);
            assert_eq!(read_connect(&packets[0]), Ok(Connect { level: 4, keep_alive_secs: 20 }));
        }
    }

    #[test]
    fn hostile_framing_is_refused() {
        assert_eq!(frames(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1, 1 << 20), Err(FrameError::BadLength));
        // A large declaration is refused at its header, before its bytes arrive.
        assert_eq!(
            frames(&[0x30, 0xff, 0xff, 0x7f], 1, 1000),
            Err(FrameError::TooLarge { len: 2_097_155, limit: 1000 })
        );
        let subscribe = Packet { packet_type: 8, flags: 2, bytes: vec![0x82, 0], body_at: 2 };
        assert_eq!(read_connect(&subscribe), Err(FrameError::NotConnect(8)));
        let http = frames(b"GET / HTTP/1.1\r\n", 16, 1 << 20).unwrap_or_default();
        assert!(http.iter().all(|p| read_connect(p).is_err()));
        let short = Packet { packet_type: 1, flags: 0, bytes: b"\x10\x06\x00\x04MQTT".to_vec(), body_at: 2 };
        assert!(matches!(read_connect(&short), Err(FrameError::BadConnect(_))));
        let other =
            Packet { packet_type: 1, flags: 0, bytes: b"\x10\x0a\x00\x04HTTP\x04\x02\x00\x14".to_vec(), body_at: 2 };
        assert!(matches!(read_connect(&other), Err(FrameError::BadConnect(_))));
    }

    #[test]
    fn publishes_give_their_topic_qos_and_payload() {
        let publish = |flags: u8, body: &[u8]| Packet {
            packet_type: 3,
            flags,
            bytes: [&[0x30 | flags, body.len() as u8][..], body].concat(),
            body_at: 2,
        };
        // QoS 0, MQTT 3.1.1.
        let p = publish(0, b"\x00\x03a/bpayload");
        assert_eq!(read_publish(&p, 4), Some(("a/b", 0, &b"payload"[..])));
        // QoS 1: a packet id before the payload.
        let p = publish(2, b"\x00\x03a/b\x00\x07payload");
        assert_eq!(read_publish(&p, 4), Some(("a/b", 1, &b"payload"[..])));
        // MQTT 5: properties (here 3 bytes) before the payload.
        let p = publish(0, b"\x00\x03a/b\x03\x01\x00\x00payload");
        assert_eq!(read_publish(&p, 5), Some(("a/b", 0, &b"payload"[..])));
        assert_eq!(read_publish(&publish(0, b"\x00\x09a/b"), 4), None, "cut short");
        let suback = Packet { packet_type: 9, flags: 0, bytes: vec![0x90, 3, 0, 1, 0], body_at: 2 };
        assert_eq!(read_publish(&suback, 4), None);
    }
}
