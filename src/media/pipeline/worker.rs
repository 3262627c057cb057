//! The worker's loop over an opened source: read (the packets held while its parameters were awaited
//! first), pace a file to real time, let the load control drop or resume, hand each packet to the
//! [`Session`]; loop a file at its end, and end a live source as closed by its server.

use super::analyse::analyse;
use super::session::Session;
use crate::media::config::{Pacing, PipelineConfig};
use crate::media::emitter::Emitter;
use crate::media::encode::rendition::RenditionControl;
use crate::media::error::MediaError;
use crate::media::events::{PipelineEvent, SourceInfo};
use crate::media::ffi;
use crate::media::load::{LoadControl, Step};
use crate::media::source::{self, ready, Source, SourceKind};
use crate::media::timing::{wallclock_us, LoopClock, Pacer};
use ffmpeg::{Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MICROS: Rational = Rational(1, 1_000_000);

/// A read from a live source that blocked at least this long waited for the source: the pipeline was not
/// behind then.
const LIVE_WAIT: Duration = Duration::from_millis(5);

/// Runs the pipeline; `start` is where the output timeline (µs) and the fragment numbering begin, and `admit`
/// says whether the work the analysed source needs may start.
pub(super) fn run(
    url: &str,
    config: &PipelineConfig,
    start: (i64, u64),
    admit: impl Fn(&SourceInfo) -> Result<(), MediaError>,
    renditions: &[Arc<RenditionControl>],
    em: &mut Emitter,
) -> Result<(), MediaError> {
    let mut source = source::open(url, &config.source, Arc::clone(&em.stop))?;
    let paced = match config.source.pacing {
        Pacing::Realtime => true,
        Pacing::Unpaced => false,
        Pacing::Auto => match source.kind {
            SourceKind::File | SourceKind::Builtin(_) => true,
            SourceKind::Http => source.has_duration,
            _ => false,
        },
    };
    // Packets read while the source's own parameters were awaited go first.
    let mut held = ready::wait_for_parameters(&mut source, config.source.connect_timeout())?;
    let info = analyse(&source, config, paced)?;
    admit(&info)?;
    tracing::info!(
        format = %info.format,
        video = ?info.video,
        audio = ?info.audio,
        "source opened"
    );
    let mut session = Session::new(&source, &info, config, renditions, start)?;
    em.control(PipelineEvent::Source(info))?;

    let live = source.kind.is_live_protocol();
    // Only an input that runs in real time can fall behind it; an unpaced file is read as fast as it goes.
    let mut load = LoadControl::new(session.transcodes_video(), paced || live);
    let mut pacer = Pacer::default();
    // One input timeline across the loops of a file: pacing and the lag carry on where the last loop ended,
    // so that a pipeline behind at the end of a loop is still behind, not forgiven.
    let mut clock = LoopClock::default();
    let mut loops = 0u64;
    loop {
        if em.stopped() {
            return Err(MediaError::Stopped);
        }
        let mut packet = Packet::empty();
        let read = match held.pop_front() {
            Some(waited) => {
                packet = waited;
                Ok(())
            }
            None => {
                let asked = Instant::now();
                let read = packet.read(&mut source.input);
                if live && asked.elapsed() >= LIVE_WAIT {
                    load.waited();
                }
                read
            }
        };
        match read {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => {
                let can_loop = config.source.looping && !live && source.has_duration;
                if can_loop && session.started() {
                    source
                        .input
                        .seek(0, ..)
                        .map_err(|e| MediaError::Processing(format!("rewinding for the next loop: {e}")))?;
                    session.start_loop();
                    clock.looped();
                    loops += 1;
                    tracing::debug!(loops, "looping the source");
                    continue;
                }
                break;
            }
            Err(ffmpeg::Error::Other { errno: ffmpeg::error::EAGAIN }) => {
                load.waited();
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            // FFmpeg's HTTP reader reports a server that closes an unsized response as EIO, not EOF.
            Err(ffmpeg::Error::Other { errno: ffmpeg::error::EIO })
                if em.stats.packets_in.load(Ordering::Relaxed) > 0 && !source.watchdog.stopping() =>
            {
                tracing::info!("the source closed the connection");
                break;
            }
            Err(e) => return Err(source.watchdog.classify_error(e, "reading the source")),
        }
        source.watchdog.touch();
        em.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        let mut arrival = wallclock_us();
        if packet.stream() == session.video_index() {
            if let Some(sent) = sender_clock(&source, &packet, arrival) {
                arrival = sent;
            }
        }
        let Some(stream_tb) = source.input.stream(packet.stream()).map(|s| s.time_base()) else { continue };
        let ts_us = packet.dts().or(packet.pts()).map(|ts| {
            let duration_us = packet.duration().max(0).rescale(stream_tb, MICROS);
            clock.continued(ts.rescale(stream_tb, MICROS), duration_us)
        });
        if let (true, Some(ts)) = (paced, ts_us) {
            let wait = pacer.delay(ts, Instant::now());
            if !wait.is_zero() {
                load.waited();
            }
            sleep_unless_stopped(wait, em)?;
        }
        let video = ts_us.filter(|_| packet.stream() == session.video_index()).map(|ts| (ts, packet.is_key()));
        match load.packet(video, Instant::now(), &em.stats) {
            Step::Drop => continue,
            Step::Resume => session.resume(),
            Step::Process => {}
        }
        session.set_share(load.share());
        session.handle(packet, arrival, em)?;
    }
    session.finish(em)?;
    if live {
        // A live stream has no end: the server closed it.
        return Err(MediaError::Ended);
    }
    Ok(())
}

/// When the sender says it sent this packet: RTCP sender reports map media time to its wall clock.
fn sender_clock(source: &Source, packet: &Packet, arrival_us: u64) -> Option<u64> {
    let origin = ffi::start_time_realtime(&source.input)?;
    let tb = source.input.stream(packet.stream())?.time_base();
    let sent = plausible_send_time(origin + packet.pts()?.rescale(tb, MICROS), arrival_us);
    tracing::trace!(lag_us = sent.map(|s| arrival_us - s), "sender clock");
    sent
}

/// A sender's send time, if plausible: not after its arrival here and less than 5 s before it. A sender whose
/// clock is not synchronised with ours would otherwise show viewers a nonsense latency.
fn plausible_send_time(sent_us: i64, arrival_us: u64) -> Option<u64> {
    let sent = u64::try_from(sent_us).ok()?;
    (sent <= arrival_us && arrival_us - sent < 5_000_000).then_some(sent)
}

/// Sleeps `wait`, waking at least every 50 ms to see whether the pipeline is asked to stop.
fn sleep_unless_stopped(wait: Duration, em: &Emitter) -> Result<(), MediaError> {
    let deadline = Instant::now() + wait;
    loop {
        if em.stopped() {
            return Err(MediaError::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_clocks_are_used_only_when_plausible() {
        assert_eq!(plausible_send_time(1_000_000, 1_034_000), Some(1_000_000));
        assert_eq!(plausible_send_time(1_040_000, 1_034_000), None, "sender clock ahead of ours");
        assert_eq!(plausible_send_time(1_000_000, 7_000_000), None, "6 s behind: clocks disagree");
        assert_eq!(plausible_send_time(-5, 7), None);
    }
}
