//! The RTMP stream-key gate. libavformat's RTMP listener takes any publish name and only logs a warning when
//! it differs from the expected one, so the relay reads the publisher's `publish` command itself and lets it
//! through only with the right key; libavformat never sees a complete `publish` with a wrong one.
//!
//! The bytes are relayed while they are read: the handshake and the commands before `publish` need answers
//! from libavformat before the publisher sends more. Only what could be the start of a `publish` command is
//! held back.

use thiserror::Error;

/// C0, C1 and C2: the handshake the publisher sends before any message.
const HANDSHAKE_BYTES: usize = 1 + 1536 + 1536;
/// An AMF0 string "publish" (type 2, length 7): the command name of the publish message.
const MARKER: &[u8] = b"\x02\x00\x07publish";
/// How far past the handshake the publish command must come.
pub const MAX_SCAN_BYTES: usize = 64 * 1024;

/// Why a publisher was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GateError {
    /// The publish name is not the endpoint's key.
    #[error("wrong stream key ({len} characters)")]
    WrongKey {
        /// Length of the name it gave; the name itself stays out of logs (it may be another endpoint's key).
        len: usize,
    },
    /// The publish command is not laid out as RTMP clients send it.
    #[error("unreadable publish command: {0}")]
    Malformed(&'static str),
    /// No publish command where one must have come.
    #[error("no publish command in the first {} KiB", MAX_SCAN_BYTES / 1024)]
    NoPublish,
}

/// Follows one publisher's bytes until its publish command has been checked.
#[derive(Debug)]
pub struct PublishGate {
    expected: Vec<u8>,
    /// Everything read so far (bounded by the scan limit), until the gate opens.
    buf: Vec<u8>,
    /// How much of `buf` went on already.
    forwarded: usize,
    open: bool,
}

/// What the publish command holds, as far as it has arrived.
enum Scan {
    /// No marker; the bytes up to here cannot be part of one.
    NotFound { safe: usize },
    /// The command starts here and is not complete yet.
    Incomplete { at: usize },
    /// The publish name (the command is complete).
    Name { name: Vec<u8> },
}

impl PublishGate {
    /// A gate letting through only a publish with this key.
    pub fn new(key: &str) -> Self {
        PublishGate { expected: key.as_bytes().to_vec(), buf: Vec::new(), forwarded: 0, open: false }
    }

    /// Whether the key was checked and right: everything passes from now on.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Takes bytes from the publisher and returns what may go on to libavformat now.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, GateError> {
        if self.open {
            return Ok(bytes.to_vec());
        }
        self.buf.extend_from_slice(bytes);
        let scan_from = HANDSHAKE_BYTES.min(self.buf.len());
        let upto = match scan(&self.buf, scan_from)? {
            Scan::NotFound { safe } => {
                if self.buf.len() > HANDSHAKE_BYTES + MAX_SCAN_BYTES {
                    return Err(GateError::NoPublish);
                }
                safe
            }
            Scan::Incomplete { at } => {
                if self.buf.len() > HANDSHAKE_BYTES + MAX_SCAN_BYTES {
                    return Err(GateError::NoPublish);
                }
                at
            }
            Scan::Name { name } => {
                if !constant_time_eq(&name, &self.expected) {
                    return Err(GateError::WrongKey { len: name.len() });
                }
                self.open = true;
                self.buf.len()
            }
        };
        Ok(self.release(upto))
    }

    /// After a quiet moment: releases a held tail that only looked like the start of a command (a publisher
    /// waiting for an answer must not wait forever). A started publish command stays held.
    pub fn flush_held(&mut self) -> Vec<u8> {
        if self.open {
            return Vec::new();
        }
        match scan(&self.buf, HANDSHAKE_BYTES.min(self.buf.len())) {
            Ok(Scan::NotFound { .. }) => self.release(self.buf.len()),
            _ => Vec::new(),
        }
    }

    /// Bytes from `forwarded` to `upto`, marking them sent; everything, once the gate is open.
    fn release(&mut self, upto: usize) -> Vec<u8> {
        let from = self.forwarded;
        let out = self.buf.get(from..upto.max(from)).unwrap_or_default().to_vec();
        self.forwarded = upto.max(from);
        if self.open {
            self.buf = Vec::new();
            self.forwarded = 0;
        }
        out
    }
}

/// Looks for the publish command in `buf` from `from`.
fn scan(buf: &[u8], from: usize) -> Result<Scan, GateError> {
    let region = &buf[from..];
    let Some(i) = region.windows(MARKER.len()).position(|w| w == MARKER) else {
        // Hold a tail that could be the start of the marker.
        let held = (1..MARKER.len()).rev().find(|&n| region.len() >= n && region.ends_with(&MARKER[..n])).unwrap_or(0);
        return Ok(Scan::NotFound { safe: buf.len() - held });
    };
    let at = from + i;
    let mut p = at + MARKER.len();
    let byte = |p: usize| buf.get(p).copied();
    // Transaction id: an AMF0 number (type 0, 8 bytes).
    match byte(p) {
        None => return Ok(Scan::Incomplete { at }),
        Some(0x00) => {}
        Some(_) => return Err(GateError::Malformed("the transaction id is not a number")),
    }
    p += 9;
    // The command object: AMF0 null.
    match byte(p) {
        None => return Ok(Scan::Incomplete { at }),
        Some(0x05) => {}
        Some(_) => return Err(GateError::Malformed("no null command object")),
    }
    p += 1;
    // The publish name: an AMF0 string.
    match byte(p) {
        None => return Ok(Scan::Incomplete { at }),
        Some(0x02) => {}
        Some(_) => return Err(GateError::Malformed("the publish name is not a string")),
    }
    let (Some(hi), Some(lo)) = (byte(p + 1), byte(p + 2)) else { return Ok(Scan::Incomplete { at }) };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > super::MAX_KEY_LEN * 4 {
        return Err(GateError::Malformed("the publish name is too long"));
    }
    let start = p + 3;
    match buf.get(start..start + len) {
        None => Ok(Scan::Incomplete { at }),
        Some(name) => Ok(Scan::Name { name: name.to_vec() }),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal how much of a key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "right-key-1234";

    /// A publisher's bytes: handshake, a connect-like message, then publish(name) inside a chunk.
    fn stream(name: &str) -> Vec<u8> {
        let mut s = vec![3u8];
        s.extend((0..1536 * 2).map(|i| (i % 251) as u8));
        // A connect command's tail (AMF0 object end) in its chunk.
        s.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 9, 0x14, 0, 0, 0, 0]);
        s.extend_from_slice(b"\x02\x00\x07connect\x00\x3f\xf0\x00\x00\x00\x00\x00\x00\x03\x00\x00\x09");
        s.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 30, 0x14, 1, 0, 0, 0]);
        s.extend_from_slice(MARKER);
        s.extend_from_slice(&[0x00, 0x40, 0x14, 0, 0, 0, 0, 0, 0, 0x05, 0x02]);
        s.extend_from_slice(&(name.len() as u16).to_be_bytes());
        s.extend_from_slice(name.as_bytes());
        s.extend_from_slice(b"\x02\x00\x04live");
        s
    }

    fn run(gate: &mut PublishGate, bytes: &[u8], step: usize) -> Result<Vec<u8>, GateError> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            out.extend(gate.push(chunk)?);
        }
        Ok(out)
    }

    #[test]
    fn the_right_key_passes_everything_through_unchanged() {
        let bytes = stream(KEY);
        for step in [1, 7, 100, 1537, bytes.len()] {
            let mut gate = PublishGate::new(KEY);
            let out = run(&mut gate, &bytes, step).unwrap();
            assert!(gate.is_open(), "step {step}");
            assert_eq!(out, bytes, "step {step}");
            assert_eq!(gate.push(b"media").unwrap(), b"media");
        }
    }

    #[test]
    fn a_wrong_key_is_refused_before_its_publish_command_gets_through() {
        for (name, step) in [("wrong-key-1234", 5), ("right-key-123", 64), ("right-key-12345", 4096), ("", 3)] {
            let bytes = stream(name);
            let mut gate = PublishGate::new(KEY);
            let mut forwarded = Vec::new();
            let mut refused = None;
            for chunk in bytes.chunks(step) {
                match gate.push(chunk) {
                    Ok(out) => forwarded.extend(out),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            assert_eq!(refused, Some(GateError::WrongKey { len: name.len() }), "{name:?}");
            let marker_at = bytes.windows(MARKER.len()).position(|w| w == MARKER).unwrap();
            assert!(
                forwarded.len() <= marker_at,
                "{name:?}: {} bytes of the publish went on",
                forwarded.len() - marker_at
            );
        }
    }

    #[test]
    fn a_held_tail_is_released_after_a_pause_but_a_started_command_is_not() {
        let mut gate = PublishGate::new(KEY);
        let mut bytes = stream(KEY);
        let marker_at = bytes.windows(MARKER.len()).position(|w| w == MARKER).unwrap();
        let tail = bytes.split_off(marker_at + 2); // ends with "\x02\x00": could be a marker
        let out = gate.push(&bytes).unwrap();
        assert_eq!(out.len(), marker_at);
        // The publisher waits for an answer: the two bytes go on after the pause.
        assert_eq!(gate.flush_held(), b"\x02\x00");
        // A publish split at that point is still read as a whole and checked.
        let out = gate.push(&tail).unwrap();
        assert!(gate.is_open());
        assert_eq!(out, tail);

        let mut gate = PublishGate::new(KEY);
        let bytes = stream("wrong-key-1234");
        gate.push(&bytes[..marker_at + 14]).unwrap();
        assert!(gate.flush_held().is_empty(), "a started publish stays held");
        assert_eq!(gate.push(&bytes[marker_at + 14..]), Err(GateError::WrongKey { len: 14 }));
    }

    #[test]
    fn garbage_and_silence_about_publish_are_refused() {
        let mut gate = PublishGate::new(KEY);
        let mut bytes = stream(KEY);
        let marker_at = bytes.windows(MARKER.len()).position(|w| w == MARKER).unwrap();
        bytes[marker_at + MARKER.len()] = 0x01;
        assert!(matches!(gate.push(&bytes), Err(GateError::Malformed(_))));

        let mut gate = PublishGate::new(KEY);
        let noise: Vec<u8> = (0..HANDSHAKE_BYTES + MAX_SCAN_BYTES + 10).map(|i| (i * 7 % 253) as u8).collect();
        assert_eq!(run(&mut gate, &noise, 4096), Err(GateError::NoPublish));
    }

    #[test]
    fn the_handshake_is_not_scanned() {
        // A handshake that happens to contain the marker must not be read as a publish.
        let mut bytes = stream(KEY);
        bytes[100..100 + MARKER.len()].copy_from_slice(MARKER);
        let mut gate = PublishGate::new(KEY);
        assert_eq!(run(&mut gate, &bytes, 512).unwrap(), bytes);
        assert!(gate.is_open());
    }
}
