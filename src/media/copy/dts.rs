//! Decode times for copied video whose demuxer (Matroska, RTSP) leaves some out. Pure.

/// Decode timestamps for demuxers (Matroska, RTSP) that leave some out: the first packet of a stream with
/// B-frames decodes `delay` frames before it is shown; later ones follow the previous decode time.
#[derive(Debug, Clone)]
pub struct DtsFiller {
    delay: i64,
    frame_duration: i64,
    last: Option<i64>,
}

impl DtsFiller {
    /// A filler for a stream with `delay` reordered frames of `frame_duration` (in the stream's time base).
    pub fn new(delay: u32, frame_duration: i64) -> Self {
        Self { delay: i64::from(delay), frame_duration: frame_duration.max(1), last: None }
    }

    /// Forgets the previous packet (a new start at a keyframe).
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// The packet's decode time: its own, or one made up that stays at or below its pts.
    pub fn fill(&mut self, dts: Option<i64>, pts: Option<i64>) -> Option<i64> {
        let dts = match (dts, self.last) {
            (Some(dts), _) => dts,
            (None, Some(last)) => {
                let next = last + self.frame_duration;
                pts.map_or(next, |pts| next.min(pts))
            }
            (None, None) => pts? - self.delay * self.frame_duration,
        };
        self.last = Some(dts);
        Some(dts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_missing_dts_like_the_decoder_would() {
        // Matroska with two B-frames: pts 0 160 80 40 120, dts missing on the first two packets.
        let mut f = DtsFiller::new(2, 40);
        let got: Vec<_> = [(None, Some(0)), (None, Some(160)), (Some(0), Some(80)), (Some(40), Some(40))]
            .into_iter()
            .map(|(d, p)| f.fill(d, p).unwrap())
            .collect();
        assert_eq!(got, vec![-80, -40, 0, 40]);
        let mut no_b = DtsFiller::new(0, 3000);
        assert_eq!(no_b.fill(None, Some(9000)), Some(9000));
        assert_eq!(no_b.fill(None, Some(10_000)), Some(10_000), "never after pts");
        assert_eq!(no_b.fill(None, None), Some(13_000));
        assert_eq!(DtsFiller::new(0, 1).fill(None, None), None, "nothing to go on");
    }
}
