//! The output's timeline: where source time becomes output time, for the video and audio of one run.

/// Origin and offset of the output timeline, shared by the tracks.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// Source time (µs) that becomes output time 0: the first video frame written.
    origin_us: Option<i64>,
    /// Added after each loop of a file so that time keeps growing.
    offset_us: i64,
    /// End of the latest video written, on the output timeline.
    end_us: i64,
}

impl Timeline {
    /// A timeline whose first frame will be at output time `offset_us` (a restarted source continues its
    /// viewers' timeline).
    pub(super) fn new(offset_us: i64) -> Self {
        Self { origin_us: None, offset_us: offset_us.max(0), end_us: offset_us.max(0) }
    }

    /// Output time (µs) of source time `ts_us`; None before the origin, or while there is none.
    pub(super) fn rel(&self, ts_us: i64) -> Option<i64> {
        let rel = ts_us - self.origin_us? + self.offset_us;
        (rel >= 0).then_some(rel)
    }

    /// Like [`Timeline::rel`], making `ts_us` the origin if there is none yet.
    pub(super) fn rel_or_start(&mut self, ts_us: i64) -> Option<i64> {
        self.origin_us.get_or_insert(ts_us);
        self.rel(ts_us)
    }

    /// Whether the origin is set.
    pub(super) fn started(&self) -> bool {
        self.origin_us.is_some()
    }

    /// The source starts again from its beginning: its times carry on from the end of the video written.
    pub(super) fn looped(&mut self) {
        self.offset_us = self.end_us;
    }

    /// Video up to output time `end_us` was written.
    pub(super) fn extend_to(&mut self, end_us: i64) {
        self.end_us = self.end_us.max(end_us);
    }

    /// End of the latest video written (µs), which dates a fragment without video.
    pub(super) fn end_us(&self) -> i64 {
        self.end_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_offsets_loops() {
        let mut t = Timeline::default();
        assert_eq!(t.rel(5), None, "no origin yet");
        assert_eq!(t.rel_or_start(1_000), Some(0));
        assert_eq!(t.rel(900), None, "before the origin");
        assert_eq!(t.rel(2_000), Some(1_000));
        t.extend_to(10_000);
        t.extend_to(9_000);
        assert_eq!(t.end_us(), 10_000, "the end never moves back");
        t.looped();
        assert_eq!(t.rel(1_000), Some(10_000));
        assert_eq!(Timeline::new(-5).rel_or_start(7), Some(0), "a negative offset starts at 0");
    }
}
