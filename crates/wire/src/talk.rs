//! Talking back over MQTT: the frames a page publishes to `<prefix>/live/<id>/talk` (docs/PROTOCOL.md, "Talk
//! back") and the floor of one camera, which one talker holds at a time. Pure: the server's talk task
//! (`src/server/talk.rs`) feeds it frames and `now`, and does what it says.

use std::time::{Duration, Instant};

/// The frame format's version.
pub const VERSION: u8 = 1;
/// The header before the talker: version, flags, sample rate (16 bits), sequence (32 bits), talker length.
const HEAD: usize = 9;
/// The most audio one frame carries: 100 ms at 48 kHz, 16-bit.
pub const MAX_PCM_BYTES: usize = 9600;
/// The sample rates a frame may have.
pub const RATES: [u16; 5] = [8000, 16000, 24000, 44100, 48000];

/// One frame of a talker's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The talker: its reply topic for talk statuses (`pages/<client id>/talk`), which is also who it is.
    pub talker: String,
    /// The last frame of a press: the talker let go.
    pub end: bool,
    /// Its sample rate, Hz.
    pub rate: u16,
    /// Its number in the talker's press (from 0), to notice losses.
    pub sequence: u32,
    /// Mono 16-bit little-endian samples.
    pub pcm: Vec<i16>,
}

/// Why a talk frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its header says.
    #[error("a talk frame of {0} bytes is shorter than its header")]
    Short(usize),
    /// Another version.
    #[error("talk frame version {0} (this server reads version {VERSION})")]
    Version(u8),
    /// A sample rate not in [`RATES`].
    #[error("talk frames at {0} Hz are not taken (8000, 16000, 24000, 44100 or 48000)")]
    Rate(u16),
    /// No talker, or one that is not UTF-8.
    #[error("a talk frame names no talker")]
    Talker,
    /// An odd number of audio bytes, or more than [`MAX_PCM_BYTES`].
    #[error("a talk frame's audio is {0} bytes (16-bit samples, at most {MAX_PCM_BYTES} bytes)")]
    Audio(usize),
}

/// Reads a frame.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    let head = bytes.get(..HEAD).ok_or(FrameError::Short(bytes.len()))?;
    if head[0] != VERSION {
        return Err(FrameError::Version(head[0]));
    }
    let rate = u16::from_be_bytes([head[2], head[3]]);
    if !RATES.contains(&rate) {
        return Err(FrameError::Rate(rate));
    }
    let sequence = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let talker_len = usize::from(head[8]);
    let talker = bytes.get(HEAD..HEAD + talker_len).ok_or(FrameError::Short(bytes.len()))?;
    let talker = std::str::from_utf8(talker).ok().filter(|t| !t.is_empty()).ok_or(FrameError::Talker)?;
    let audio = &bytes[HEAD + talker_len..];
    if audio.len() % 2 != 0 || audio.len() > MAX_PCM_BYTES {
        return Err(FrameError::Audio(audio.len()));
    }
    let pcm = audio.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect();
    Ok(Frame { talker: talker.to_string(), end: head[1] & 1 != 0, rate, sequence, pcm })
}

/// Writes a frame (the page's format; the tests and the bench speak it too). None for a talker of over 255
/// bytes.
pub fn frame_bytes(talker: &str, end: bool, rate: u16, sequence: u32, pcm: &[i16]) -> Option<Vec<u8>> {
    let talker_len = u8::try_from(talker.len()).ok()?;
    let mut out = Vec::with_capacity(HEAD + talker.len() + pcm.len() * 2);
    out.extend_from_slice(&[VERSION, u8::from(end)]);
    out.extend_from_slice(&rate.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.push(talker_len);
    out.extend_from_slice(talker.as_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    Some(out)
}

/// What the floor of a camera says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `talker` holds the floor now: open the backchannel, tell it `on`.
    Open(String),
    /// The frame goes to the camera.
    Send,
    /// Someone else holds the floor: tell `talker` `busy` (at most once a second per talker).
    Busy(String),
    /// `talker` let go, went quiet or vanished: close the backchannel, tell it `off` and why.
    Close(String, Release),
}

/// Why a talker's hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Its last frame said so.
    LetGo,
    /// No frame for [`Floor::QUIET`].
    Quiet,
    /// Its page went away (its last will).
    Gone,
}

impl Release {
    /// The word statuses carry.
    pub fn word(self) -> &'static str {
        match self {
            Release::LetGo => "let_go",
            Release::Quiet => "quiet",
            Release::Gone => "gone",
        }
    }
}

/// One camera's floor: one talker at a time.
#[derive(Debug, Default)]
pub struct Floor {
    holder: Option<(String, Instant)>,
    busy_told: Vec<(String, Instant)>,
}

/// The parent of a reply topic (`pages/page_ab12` for `pages/page_ab12/talk`): a page's identity, as its last
/// will names it with another last level.
fn page_of(topic: &str) -> &str {
    topic.rsplit_once('/').map_or(topic, |(parent, _)| parent)
}

impl Floor {
    /// Silence after which a talker's hold ends: its page froze or lost its link (the bound is 2 s
    /// from the last frame to a free backchannel; the tick that notices comes within 250 ms of this).
    pub const QUIET: Duration = Duration::from_millis(1500);
    /// How often a talker who is refused is told so again.
    pub const BUSY_AGAIN: Duration = Duration::from_secs(1);

    /// Who holds the floor.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_ref().map(|(t, _)| t.as_str())
    }

    /// A frame of `talker` (`end`: its last) at `now`.
    pub fn frame(&mut self, talker: &str, end: bool, now: Instant) -> Vec<Action> {
        let mut actions = self.tick(now);
        match &mut self.holder {
            Some((holder, _)) if holder != talker => {
                let told = self.busy_told.iter_mut().find(|(t, _)| t == talker);
                match told {
                    Some((_, at)) if now.saturating_duration_since(*at) < Self::BUSY_AGAIN => {}
                    Some((_, at)) => {
                        *at = now;
                        actions.push(Action::Busy(talker.to_string()));
                    }
                    None => {
                        self.busy_told.push((talker.to_string(), now));
                        actions.push(Action::Busy(talker.to_string()));
                    }
                }
                return actions;
            }
            Some((_, last)) => *last = now,
            None => {
                self.holder = Some((talker.to_string(), now));
                self.busy_told.retain(|(t, _)| t != talker);
                actions.push(Action::Open(talker.to_string()));
            }
        }
        actions.push(Action::Send);
        if end {
            self.holder = None;
            actions.push(Action::Close(talker.to_string(), Release::LetGo));
        }
        actions
    }

    /// The page of reply topic `reply_topic` went away (its last will, a stop naming it): its hold ends.
    pub fn gone(&mut self, reply_topic: &str) -> Vec<Action> {
        let page = page_of(reply_topic);
        self.busy_told.retain(|(t, _)| page_of(t) != page);
        match self.holder.take() {
            Some((holder, _)) if page_of(&holder) == page => vec![Action::Close(holder, Release::Gone)],
            other => {
                self.holder = other;
                Vec::new()
            }
        }
    }

    /// Time passed: a hold quiet for [`Floor::QUIET`] ends.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.busy_told.retain(|(_, at)| now.saturating_duration_since(*at) < Self::BUSY_AGAIN * 10);
        match &self.holder {
            Some((holder, last)) if now.saturating_duration_since(*last) >= Self::QUIET => {
                let holder = holder.clone();
                self.holder = None;
                vec![Action::Close(holder, Release::Quiet)]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_specific_errors() {
        let bytes = frame_bytes("pages/page_ab12/talk", false, 16000, 7, &[1, -2, 300]).unwrap();
        let frame = parse_frame(&bytes).unwrap();
        assert_eq!(
            frame,
            Frame {
                talker: "pages/page_ab12/talk".into(),
                end: false,
                rate: 16000,
                sequence: 7,
                pcm: vec![1, -2, 300]
            }
        );
        assert!(parse_frame(&frame_bytes("p/t", true, 8000, 0, &[]).unwrap()).unwrap().end);
        let mut odd = bytes.clone();
        odd.push(0);
        let table: [(Vec<u8>, FrameError); 6] = [
            (bytes[..5].to_vec(), FrameError::Short(5)),
            ([&[2u8][..], &bytes[1..]].concat(), FrameError::Version(2)),
            (frame_bytes("p/t", false, 12345, 0, &[]).unwrap(), FrameError::Rate(12345)),
            (frame_bytes("", false, 8000, 0, &[]).unwrap(), FrameError::Talker),
            (odd, FrameError::Audio(7)),
            (frame_bytes("p/t", false, 8000, 0, &[0; 4801]).unwrap(), FrameError::Audio(9602)),
        ];
        for (bytes, want) in table {
            assert_eq!(parse_frame(&bytes), Err(want.clone()), "{want}");
        }
        assert_eq!(frame_bytes(&"x".repeat(256), false, 8000, 0, &[]), None);
    }

    #[test]
    fn one_talker_at_a_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (a, b) = ("pages/a/talk", "pages/b/talk");
        let open = |t: &str| Action::Open(t.to_string());
        let busy = |t: &str| Action::Busy(t.to_string());
        let close = |t: &str, why| Action::Close(t.to_string(), why);
        let mut floor = Floor::default();
        // Each row: who sends (or None: a tick), its end flag, when, what the floor says.
        let table: Vec<(Option<&str>, bool, u64, Vec<Action>)> = vec![
            (Some(a), false, 0, vec![open(a), Action::Send]),
            (Some(a), false, 20, vec![Action::Send]),
            (Some(b), false, 30, vec![busy(b)]),
            // Told once a second, not once a frame; the first talker goes on.
            (Some(b), false, 50, vec![]),
            (Some(a), false, 60, vec![Action::Send]),
            (Some(b), false, 1030, vec![busy(b)]),
            // a lets go: b's next frame takes the floor.
            (Some(a), true, 1040, vec![Action::Send, close(a, Release::LetGo)]),
            (Some(b), false, 1060, vec![open(b), Action::Send]),
            // b goes quiet: 1.5 s later the floor is free.
            (None, false, 2500, vec![]),
            (None, false, 2560, vec![close(b, Release::Quiet)]),
            (Some(a), false, 3000, vec![open(a), Action::Send]),
        ];
        for (i, (who, end, ms, want)) in table.into_iter().enumerate() {
            let got = match who {
                Some(t) => floor.frame(t, end, at(ms)),
                None => floor.tick(at(ms)),
            };
            assert_eq!(got, want, "row {i}");
        }
        // a's page goes away (its last will names its media reply topic): the floor is free at once.
        assert_eq!(floor.gone("pages/b/media"), vec![], "not the holder's page");
        assert_eq!(floor.gone("pages/a/media"), vec![close(a, Release::Gone)]);
        assert_eq!(floor.holder(), None);
    }
}
