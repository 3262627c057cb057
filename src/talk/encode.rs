//! The talker's audio for the camera: 16-bit mono PCM at the page's rate, resampled (libswresample) to the
//! backchannel's clock and encoded (libavcodec) in the codec its SDP asked for. G.711 only for now: one byte
//! per sample at 8 kHz, what most cameras take.

use ffmpeg::channel_layout::ChannelLayout;
use ffmpeg::format::{sample::Type, Sample};
use ffmpeg::software::resampling;
use ffmpeg::{codec, encoder, frame, Packet};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::rtsp::sdp::TalkCodec;

/// Why the talker's audio cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A codec this encoder does not make.
    #[error("the camera's backchannel takes {0}, which this server does not send yet (it sends PCMU and PCMA)")]
    Codec(&'static str),
    /// A sample rate out of range.
    #[error("the talker's sample rate {0} Hz is not one of 8000 to 48000")]
    Rate(u32),
    /// libav refused.
    #[error("{what}: {source}")]
    Libav {
        /// What was being done.
        what: &'static str,
        /// libav's error.
        source: ffmpeg::Error,
    },
}

fn libav(what: &'static str) -> impl FnOnce(ffmpeg::Error) -> EncodeError {
    move |source| EncodeError::Libav { what, source }
}

const S16: Sample = Sample::I16(Type::Packed);

/// PCM in, the backchannel's codec out.
pub struct TalkEncoder {
    resampler: resampling::Context,
    encoder: encoder::Audio,
    in_rate: u32,
    out_rate: u32,
    pts: i64,
}

impl TalkEncoder {
    /// An encoder for `codec` at `out_rate` Hz (the backchannel's clock), from PCM at `in_rate` Hz.
    pub fn new(codec: &TalkCodec, in_rate: u32, out_rate: u32) -> Result<Self, EncodeError> {
        let id = match codec {
            TalkCodec::Pcmu => codec::Id::PCM_MULAW,
            TalkCodec::Pcma => codec::Id::PCM_ALAW,
            TalkCodec::Aac { .. } => return Err(EncodeError::Codec("AAC")),
        };
        for rate in [in_rate, out_rate] {
            if !(8000..=48000).contains(&rate) {
                return Err(EncodeError::Rate(rate));
            }
        }
        let found = encoder::find(id).ok_or(EncodeError::Codec(codec.name()))?;
        let mut context =
            codec::context::Context::new_with_codec(found).encoder().audio().map_err(libav("creating the encoder"))?;
        context.set_rate(out_rate as i32);
        context.set_channel_layout(ChannelLayout::MONO);
        context.set_format(S16);
        context.set_time_base(ffmpeg::Rational(1, out_rate as i32));
        let encoder = context.open_as(found).map_err(libav("opening the encoder"))?;
        let resampler = resampling::Context::get(S16, ChannelLayout::MONO, in_rate, S16, ChannelLayout::MONO, out_rate)
            .map_err(libav("creating the resampler"))?;
        Ok(Self { resampler, encoder, in_rate, out_rate, pts: 0 })
    }

    /// Encodes `pcm` (mono, at the input rate); returns the codec's bytes and how many samples at the output
    /// rate they hold. The resampler keeps a few samples back between calls.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<(Vec<u8>, u32), EncodeError> {
        if pcm.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let mut input = frame::Audio::new(S16, pcm.len(), ChannelLayout::MONO);
        input.set_rate(self.in_rate);
        for (slot, sample) in input.plane_mut::<i16>(0).iter_mut().zip(pcm) {
            *slot = *sample;
        }
        // Room for what the input makes at the output rate, and what the resampler held back.
        let room = pcm.len() * self.out_rate as usize / self.in_rate as usize + 64;
        let mut output = frame::Audio::new(S16, room, ChannelLayout::MONO);
        output.set_rate(self.out_rate);
        self.resampler.run(&input, &mut output).map_err(libav("resampling"))?;
        let samples = output.samples();
        if samples == 0 {
            return Ok((Vec::new(), 0));
        }
        output.set_pts(Some(self.pts));
        self.pts += samples as i64;
        self.encoder.send_frame(&output).map_err(libav("encoding"))?;
        let mut bytes = Vec::new();
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            bytes.extend_from_slice(packet.data().unwrap_or_default());
        }
        Ok((bytes, samples as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_at_16_khz_is_a_second_of_pcmu_at_8_khz_in_20_ms_frames() {
        ffmpeg::init().unwrap();
        let mut encoder = TalkEncoder::new(&TalkCodec::Pcmu, 16000, 8000).unwrap();
        let tone: Vec<i16> = (0..16000)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / 16000.0).sin()) as i16)
            .collect();
        let mut bytes = Vec::new();
        let mut samples = 0;
        // In 20 ms frames, as the page sends them.
        for frame in tone.chunks(320) {
            let (b, n) = encoder.encode(frame).unwrap();
            assert_eq!(b.len(), n as usize, "G.711: a byte a sample");
            bytes.extend(b);
            samples += n;
        }
        assert!((7900..=8000).contains(&samples), "{samples} samples for one second at 8 kHz");
        // Not silence: µ-law's zero is 0xFF (and 0x7F), which a 1 kHz sine at 8 kHz hits on 2 samples of 8. The
        // tone itself is checked where a camera hears it (tests/it/talk.rs).
        let zeros = bytes.iter().filter(|&&b| b == 0xFF || b == 0x7F).count();
        assert!(zeros < bytes.len() / 3, "{zeros} of {} samples are silence: {:?}", bytes.len(), &bytes[..32]);
    }

    #[test]
    fn what_it_cannot_make_is_a_specific_error() {
        ffmpeg::init().unwrap();
        assert!(matches!(
            TalkEncoder::new(&TalkCodec::Aac { config: vec![0x14, 0x08] }, 16000, 16000),
            Err(EncodeError::Codec("AAC"))
        ));
        assert!(matches!(TalkEncoder::new(&TalkCodec::Pcma, 96000, 8000), Err(EncodeError::Rate(96000))));
        assert!(TalkEncoder::new(&TalkCodec::Pcma, 48000, 8000).is_ok());
    }
}
