//! The ONVIF backchannel of one camera (ONVIF Streaming Specification 5.3). The server reads a camera through
//! libavformat, whose RTSP client has no backchannel, so talking back is an RTSP session of its own, over
//! TCP: DESCRIBE with `Require: www.onvif.org/ver20/backchannel`, SETUP of the backchannel section alone,
//! PLAY, then RTP interleaved on the same connection, with a keep-alive within the session's timeout. What the
//! camera sends is read by `mqtt_video_wire::rtsp` (pure, fuzzed); this file holds only the I/O.

use mqtt_video_wire::rtsp::message::{self, Incoming, Reader, Response};
use mqtt_video_wire::rtsp::sdp::{self, TalkCodec, REQUIRE_BACKCHANNEL};
use mqtt_video_wire::rtsp::url::{self, RtspUrl};
use mqtt_video_wire::rtsp::{auth, rtp};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a camera may take to answer a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why the backchannel cannot be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum TalkError {
    /// The URL is not one to talk to.
    #[error(transparent)]
    Url(#[from] url::UrlError),
    /// No TCP connection to the camera.
    #[error("cannot reach the camera at {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// What the connection failed with.
        source: std::io::Error,
    },
    /// The connection failed after it was made.
    #[error("the camera's connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("the camera did not answer {0} within {ANSWER_WITHIN:?}")]
    Timeout(&'static str),
    /// The camera closed the connection.
    #[error("the camera closed the connection")]
    Closed,
    /// The camera's bytes are not RTSP.
    #[error(transparent)]
    Message(#[from] message::MessageError),
    /// A login the server cannot give.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The camera refused the URL's login (or the URL has none and the camera wants one).
    #[error("the camera refused the login for {0} (401): check the user and password in the source URL")]
    LoginRefused(&'static str),
    /// Any other refusal.
    #[error("the camera answered {method} with {status} {reason}")]
    Status {
        /// The request.
        method: &'static str,
        /// Its status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A SETUP answered without a session.
    #[error("the camera answered SETUP without a Session")]
    NoSession,
    /// The camera offers no backchannel the server can send to.
    #[error("the camera has no backchannel (no sendonly audio section in its SDP for a DESCRIBE requiring it)")]
    NoBackchannel,
    /// A packet's payload over what one interleaved frame carries.
    #[error("{0} bytes of audio in one RTP packet (at most {max})", max = rtp::MAX_PAYLOAD)]
    TooLarge(usize),
    /// A backchannel in a codec the server does not send yet.
    #[error("the camera's backchannel takes {0}, which this server does not send yet (it sends PCMU and PCMA)")]
    Codec(&'static str),
}

/// One RTSP/TCP connection to the camera: requests answered in order, one login challenge answered.
struct Connection {
    stream: TcpStream,
    reader: Reader,
    url: RtspUrl,
    cseq: u32,
    /// The challenge answered last, and how many requests answered it (Digest's nonce count).
    login: Option<(auth::Challenge, u32)>,
    /// What came while waiting for a response (the camera's own requests are answered at once).
    early: VecDeque<Incoming>,
    random: SystemRandom,
}

impl Connection {
    async fn open(url: &str) -> Result<Self, TalkError> {
        let url = url::parse(url)?;
        let addr = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let stream = tokio::time::timeout(ANSWER_WITHIN, TcpStream::connect(&addr))
            .await
            .map_err(|_| TalkError::Timeout("the TCP connection"))?
            .map_err(|source| TalkError::Connect { addr: addr.clone(), source })?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            reader: Reader::new(),
            url,
            cseq: 0,
            login: None,
            early: VecDeque::new(),
            random: SystemRandom::new(),
        })
    }

    fn random_u32(&self) -> u32 {
        let mut bytes = [0u8; 4];
        // A failed draw leaves zeros: RTP's identifiers need only differ between sessions, not be secret.
        let _ = self.random.fill(&mut bytes);
        u32::from_be_bytes(bytes)
    }

    /// The request's bytes, with the login's `Authorization` once a challenge came.
    fn request_bytes(&mut self, method: &'static str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        self.cseq += 1;
        let mut text = format!("{method} {target} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: mqtt-video\r\n", self.cseq);
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        let cnonce = format!("{:08x}", self.random_u32());
        if let (Some((challenge, count)), Some((user, password))) = (self.login.as_mut(), self.url.login.as_ref()) {
            *count += 1;
            text.push_str(&format!(
                "Authorization: {}\r\n",
                auth::authorization(challenge, user, password, method, target, &cnonce, *count)
            ));
        }
        text.push_str("\r\n");
        text.into_bytes()
    }

    /// Sends `method` on `target` and returns the camera's 2xx response, answering a login challenge once.
    async fn request(
        &mut self,
        method: &'static str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, TalkError> {
        let mut answered_challenge = false;
        loop {
            let bytes = self.request_bytes(method, target, headers);
            self.stream.write_all(&bytes).await?;
            let cseq = self.cseq;
            let response = tokio::time::timeout(ANSWER_WITHIN, self.response(cseq))
                .await
                .map_err(|_| TalkError::Timeout(method))??;
            match response.status {
                200..=299 => return Ok(response),
                401 if !answered_challenge && self.url.login.is_some() => {
                    let challenge = auth::challenges(response.headers_named("WWW-Authenticate"))?.remove(0);
                    self.login = Some((challenge, 0));
                    answered_challenge = true;
                }
                401 => return Err(TalkError::LoginRefused(method)),
                status => return Err(TalkError::Status { method, status, reason: response.reason }),
            }
        }
    }

    /// Reads until the response with `cseq`; the camera's own requests are answered, interleaved frames
    /// (its RTCP) dropped.
    async fn response(&mut self, cseq: u32) -> Result<Response, TalkError> {
        loop {
            while let Some(incoming) = self.early.pop_front() {
                match incoming {
                    Incoming::Response(r) if r.cseq() == Some(cseq) || r.cseq().is_none() => return Ok(r),
                    Incoming::Request { cseq: theirs, .. } => self.answer(theirs).await?,
                    _ => {}
                }
            }
            self.read_some().await?;
        }
    }

    /// Reads what the camera sent, into `early`.
    async fn read_some(&mut self) -> Result<(), TalkError> {
        let mut buf = [0u8; 4096];
        let n = self.stream.read(&mut buf).await?;
        if n == 0 {
            return Err(TalkError::Closed);
        }
        self.early.extend(self.reader.push(&buf[..n])?);
        Ok(())
    }

    /// A camera's request (a keep-alive of its own): "200 OK", which is what every method it may send wants.
    async fn answer(&mut self, cseq: Option<u32>) -> Result<(), TalkError> {
        let cseq = cseq.map(|c| format!("CSeq: {c}\r\n")).unwrap_or_default();
        self.stream.write_all(format!("RTSP/1.0 200 OK\r\n{cseq}\r\n").as_bytes()).await?;
        Ok(())
    }

    /// Reads without waiting what the camera sent meanwhile: its RTCP and the answers to keep-alives, which
    /// must be taken off the socket but say nothing the sender needs. A refusal of the session ends it.
    async fn drain(&mut self) -> Result<(), TalkError> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.try_read(&mut buf) {
                Ok(0) => return Err(TalkError::Closed),
                Ok(n) => self.early.extend(self.reader.push(&buf[..n])?),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(incoming) = self.early.pop_front() {
            match incoming {
                Incoming::Response(r) if r.status == 454 => {
                    return Err(TalkError::Status { method: "GET_PARAMETER", status: r.status, reason: r.reason })
                }
                Incoming::Request { cseq, .. } => self.answer(cseq).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a camera's DESCRIBE with the backchannel required offers: its backchannel, or None.
pub async fn describe(url: &str) -> Result<Option<sdp::Backchannel>, TalkError> {
    let mut conn = Connection::open(url).await?;
    let backchannel = described(&mut conn).await?.map(|(b, _)| b);
    let _ = conn.stream.shutdown().await;
    Ok(backchannel)
}

/// DESCRIBE with the backchannel required: the backchannel and the aggregate URL to PLAY.
async fn described(conn: &mut Connection) -> Result<Option<(sdp::Backchannel, String)>, TalkError> {
    let target = conn.url.request.clone();
    let asked =
        conn.request("DESCRIBE", &target, &[("Accept", "application/sdp"), ("Require", REQUIRE_BACKCHANNEL)]).await;
    let response = match asked {
        // RFC 2326 12.32: a server that does not know what a Require names answers 551 (a camera without
        // ONVIF's backchannel).
        Err(TalkError::Status { status: 551, .. }) => return Ok(None),
        other => other?,
    };
    let base = response.header("Content-Base").or(response.header("Content-Location")).unwrap_or(&target).to_string();
    let parsed = sdp::parse(&response.body);
    let aggregate = sdp::control_url(&base, parsed.control.as_deref());
    Ok(sdp::backchannel(&parsed, &base).map(|b| (b, aggregate)))
}

/// An open backchannel: RTP sent to the camera's speaker.
pub struct Backchannel {
    conn: Connection,
    session: String,
    aggregate: String,
    /// The backchannel as the camera's SDP describes it.
    pub info: sdp::Backchannel,
    channel: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    keepalive_every: Duration,
    last_request: Instant,
}

/// The first channel of SETUP's answered `Transport` (`...;interleaved=2-3`), else the one asked for.
fn interleaved_channel(transport: Option<&str>) -> u8 {
    transport
        .and_then(|t| t.split(';').find_map(|p| p.trim().strip_prefix("interleaved=")))
        .and_then(|range| range.split('-').next()?.trim().parse().ok())
        .unwrap_or(0)
}

impl Backchannel {
    /// Opens `url`'s backchannel: DESCRIBE, SETUP of the backchannel alone, PLAY.
    pub async fn open(url: &str) -> Result<Self, TalkError> {
        let mut conn = Connection::open(url).await?;
        let (info, aggregate) = described(&mut conn).await?.ok_or(TalkError::NoBackchannel)?;
        if let TalkCodec::Aac { .. } = info.codec {
            return Err(TalkError::Codec("AAC"));
        }
        let control = info.control.clone();
        let setup = conn
            .request(
                "SETUP",
                &control,
                &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"), ("Require", REQUIRE_BACKCHANNEL)],
            )
            .await?;
        let (session, timeout) = setup.session().ok_or(TalkError::NoSession)?;
        let channel = interleaved_channel(setup.header("Transport"));
        conn.request("PLAY", &aggregate, &[("Session", &session), ("Require", REQUIRE_BACKCHANNEL)]).await?;
        let (sequence, timestamp, ssrc) = (conn.random_u32() as u16, conn.random_u32(), conn.random_u32());
        Ok(Self {
            conn,
            session,
            aggregate,
            info,
            channel,
            sequence,
            timestamp,
            ssrc,
            keepalive_every: Duration::from_secs((timeout / 2).clamp(5, 30)),
            last_request: Instant::now(),
        })
    }

    /// Sends `payload` (encoded audio of `samples` samples at the clock rate) as one RTP packet; keeps the
    /// session alive and takes what the camera sent off the socket.
    pub async fn send(&mut self, payload: &[u8], samples: u32) -> Result<(), TalkError> {
        self.conn.drain().await?;
        if self.last_request.elapsed() >= self.keepalive_every {
            let target = self.aggregate.clone();
            let session = self.session.clone();
            let bytes = self.conn.request_bytes("GET_PARAMETER", &target, &[("Session", &session)]);
            self.conn.stream.write_all(&bytes).await?;
            self.last_request = Instant::now();
        }
        if payload.len() > rtp::MAX_PAYLOAD {
            return Err(TalkError::TooLarge(payload.len()));
        }
        let packet = rtp::interleaved(
            self.channel,
            self.info.payload_type,
            false,
            self.sequence,
            self.timestamp,
            self.ssrc,
            payload,
        );
        self.conn.stream.write_all(&packet).await?;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        Ok(())
    }

    /// Ends the session (TEARDOWN, not waited for) and closes the connection.
    pub async fn close(mut self) {
        let (target, session) = (self.aggregate.clone(), self.session.clone());
        let bytes = self.conn.request_bytes("TEARDOWN", &target, &[("Session", &session)]);
        let _ = self.conn.stream.write_all(&bytes).await;
        let _ = self.conn.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_the_camera_gave() {
        assert_eq!(interleaved_channel(Some("RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=1")), 2);
        assert_eq!(interleaved_channel(Some("RTP/AVP/TCP;unicast")), 0);
        assert_eq!(interleaved_channel(None), 0);
    }
}
