//! The camera's side of an RTSP/TCP connection, from bytes in any pieces: responses (status line, headers,
//! body), requests a camera may send (some send `GET_PARAMETER` or `ANNOUNCE`), and interleaved binary frames
//! (`$`, a channel, a 16-bit length: its RTCP). RFC 2326 sections 6, 7 and 10.12.

/// The longest head (start line and headers) taken from a camera.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest body taken from a camera (an SDP is a few kilobytes).
pub const MAX_BODY: usize = 64 * 1024;

/// An RTSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 401, 454, ...).
    pub status: u16,
    /// The reason phrase, as sent.
    pub reason: String,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `CSeq` the response answers.
    pub fn cseq(&self) -> Option<u32> {
        self.header("CSeq")?.trim().parse().ok()
    }

    /// The `Session` header: its id and its timeout in seconds (60 where not given, RFC 2326 12.37).
    pub fn session(&self) -> Option<(String, u64)> {
        let value = self.header("Session")?;
        let mut parts = value.split(';');
        let id = parts.next()?.trim();
        if id.is_empty() {
            return None;
        }
        let timeout = parts
            .filter_map(|p| p.trim().strip_prefix("timeout="))
            .find_map(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(60);
        Some((id.to_string(), timeout))
    }
}

/// One thing a camera sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A response to one of our requests.
    Response(Response),
    /// A request of the camera's own (its method; the client answers or ignores it).
    Request {
        /// The method, such as `GET_PARAMETER`.
        method: String,
        /// Its `CSeq`, to answer with.
        cseq: Option<u32>,
    },
    /// An interleaved frame.
    Interleaved {
        /// The channel (RTP and RTCP of a track, as SETUP's `interleaved=` named them).
        channel: u8,
        /// The frame's bytes.
        payload: Vec<u8>,
    },
}

/// Why a camera's bytes cannot be read as RTSP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// No end of the head within [`MAX_HEAD`] bytes.
    #[error("the camera sent a message head of more than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// A `Content-Length` over [`MAX_BODY`].
    #[error("the camera announced a body of {0} bytes (at most {MAX_BODY})")]
    BodyTooLong(usize),
    /// A start line that is neither a response's nor a request's.
    #[error("not RTSP from the camera: {0:?}")]
    StartLine(String),
    /// A `Content-Length` that is not a number.
    #[error("the camera's Content-Length is not a number: {0:?}")]
    ContentLength(String),
}

/// Reads what a camera sends, from bytes in any pieces.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes at the buffer's start already searched for a head's end: a head that comes in many pieces is
    /// searched once, not once per piece.
    searched: usize,
}

/// The end of the head (`\r\n\r\n`, or `\n\n` from a sloppy camera): where the body starts. The search
/// starts at `from`, a little before where an earlier one stopped.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.saturating_sub(3).min(buf.len());
    let crlf = buf[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at + 4);
    let lf = buf[from..].windows(2).position(|w| w == b"\n\n").map(|at| from + at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Reader {
    /// A reader at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the bytes that came; returns the messages they complete, in order. After an error the
    /// connection cannot be read on.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Incoming>, MessageError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let searched = if at == 0 { self.searched } else { 0 };
            match next(&self.buf[at..], searched)? {
                Step::Message(message, used) => {
                    out.push(message);
                    at += used;
                }
                Step::Need { searched } => {
                    self.searched = searched;
                    break;
                }
            }
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// What the start of a buffer holds.
enum Step {
    /// A complete message and its length.
    Message(Incoming, usize),
    /// Not yet a whole message; the first `searched` bytes hold no head's end.
    Need {
        /// How far the search for the head's end got (0: it was found, or it is an interleaved frame).
        searched: usize,
    },
}

/// The first complete message of `buf`; the first `searched` bytes hold no head's end.
fn next(buf: &[u8], searched: usize) -> Result<Step, MessageError> {
    const MORE: Step = Step::Need { searched: 0 };
    let Some(&first) = buf.first() else { return Ok(MORE) };
    if first == b'$' {
        let Some(header) = buf.get(..4) else { return Ok(MORE) };
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some(payload) = buf.get(4..4 + len) else { return Ok(MORE) };
        return Ok(Step::Message(Incoming::Interleaved { channel: header[1], payload: payload.to_vec() }, 4 + len));
    }
    let Some(end) = head_end(&buf[..buf.len().min(MAX_HEAD)], searched) else {
        return if buf.len() >= MAX_HEAD {
            Err(MessageError::HeadTooLong)
        } else {
            Ok(Step::Need { searched: buf.len() })
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.lines();
    let start = lines.next().unwrap_or_default().trim().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length = match headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("Content-Length")) {
        None => 0,
        Some((_, v)) => v.parse::<usize>().map_err(|_| MessageError::ContentLength(v.clone()))?,
    };
    if length > MAX_BODY {
        return Err(MessageError::BodyTooLong(length));
    }
    let Some(body) = buf.get(end..end + length) else { return Ok(MORE) };
    let used = end + length;
    if let Some(rest) = start.strip_prefix("RTSP/") {
        let mut words = rest.splitn(3, ' ');
        let _version = words.next();
        let status = words.next().and_then(|s| s.parse::<u16>().ok()).filter(|s| (100..600).contains(s));
        let Some(status) = status else { return Err(MessageError::StartLine(start)) };
        let reason = words.next().unwrap_or_default().to_string();
        return Ok(Step::Message(Incoming::Response(Response { status, reason, headers, body: body.to_vec() }), used));
    }
    let mut words = start.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(method), Some(_url), Some(version))
            if version.starts_with("RTSP/")
                && !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            let cseq = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("CSeq")).and_then(|(_, v)| v.parse().ok());
            Ok(Step::Message(Incoming::Request { method: method.to_string(), cseq }, used))
        }
        _ => Err(MessageError::StartLine(start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBED: &[u8] = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Base: rtsp://cam/live/\r\n\
        Content-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\ns=x\r\n";

    fn whole(bytes: &[u8]) -> Vec<Incoming> {
        Reader::new().push(bytes).unwrap()
    }

    #[test]
    fn a_response_with_a_body_in_any_pieces() {
        let want = whole(DESCRIBED);
        assert_eq!(want.len(), 1);
        let Incoming::Response(r) = &want[0] else { panic!("{want:?}") };
        assert_eq!((r.status, r.reason.as_str(), r.cseq()), (200, "OK", Some(2)));
        assert_eq!(r.header("content-base"), Some("rtsp://cam/live/"));
        assert_eq!(r.body, b"v=0\r\ns=x\r\n");
        for step in 1..DESCRIBED.len() {
            let mut reader = Reader::new();
            let mut got = Vec::new();
            for piece in DESCRIBED.chunks(step) {
                got.extend(reader.push(piece).unwrap());
            }
            assert_eq!(got, want, "in pieces of {step}");
        }
    }

    #[test]
    fn interleaved_frames_requests_and_responses_in_a_row() {
        let mut bytes = vec![b'$', 1, 0, 3, 0xAA, 0xBB, 0xCC];
        bytes.extend_from_slice(b"GET_PARAMETER rtsp://client/ RTSP/1.0\r\nCSeq: 7\r\n\r\n");
        bytes.extend_from_slice(b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nSession: 12AB;timeout=30\r\n\r\n");
        bytes.extend_from_slice(b"RTSP/1.0 401 Unauthorized\nCSeq: 6\n\n");
        let got = whole(&bytes);
        assert_eq!(got[0], Incoming::Interleaved { channel: 1, payload: vec![0xAA, 0xBB, 0xCC] });
        assert_eq!(got[1], Incoming::Request { method: "GET_PARAMETER".into(), cseq: Some(7) });
        let Incoming::Response(ok) = &got[2] else { panic!() };
        assert_eq!(ok.session(), Some(("12AB".to_string(), 30)));
        let Incoming::Response(refused) = &got[3] else { panic!() };
        assert_eq!((refused.status, refused.cseq(), refused.session()), (401, Some(6), None));
    }

    #[test]
    fn a_session_without_timeout_has_rfc_2326s_sixty_seconds() {
        let got = whole(b"RTSP/1.0 200 OK\r\nSession: abc\r\n\r\n");
        let Incoming::Response(r) = &got[0] else { panic!() };
        assert_eq!(r.session(), Some(("abc".to_string(), 60)));
    }

    #[test]
    fn what_is_not_rtsp_is_a_specific_error() {
        let table: [(&[u8], MessageError); 4] = [
            (b"HTTP/1.1 200 OK\r\n\r\n", MessageError::StartLine("HTTP/1.1 200 OK".into())),
            (b"RTSP/1.0 abc OK\r\n\r\n", MessageError::StartLine("RTSP/1.0 abc OK".into())),
            (b"RTSP/1.0 200 OK\r\nContent-Length: x\r\n\r\n", MessageError::ContentLength("x".into())),
            (b"RTSP/1.0 200 OK\r\nContent-Length: 999999\r\n\r\n", MessageError::BodyTooLong(999_999)),
        ];
        for (bytes, want) in table {
            assert_eq!(Reader::new().push(bytes), Err(want), "{:?}", String::from_utf8_lossy(bytes));
        }
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(Reader::new().push(&endless), Err(MessageError::HeadTooLong));
        // Short of the limit it waits for more.
        assert_eq!(Reader::new().push(&endless[..100]), Ok(vec![]));
    }
}
