//! Audio transcoding: decode anything libavcodec knows (G.711, MP2, AAC, ...), resample, encode AAC-LC.

use crate::media::config::AudioEncoderConfig;
use crate::media::error::{processing, received, MediaError};
use ffmpeg::channel_layout::ChannelLayout;
use ffmpeg::format::Sample;
use ffmpeg::{codec, decoder, encoder, filter, frame, Dictionary, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;

/// Decodes the source audio and encodes AAC in 1024-sample frames.
pub struct AudioTranscoder {
    decoder: decoder::Audio,
    encoder: encoder::Audio,
    input_time_base: Rational,
    resampler: Option<Resampler>,
}

struct Resampler {
    graph: filter::Graph,
    input: (u32, Sample, u64),
}

fn layout_for(channels: u32) -> ChannelLayout {
    ChannelLayout::default(channels.max(1) as i32)
}

impl AudioTranscoder {
    /// Opens the decoder for `parameters` and an AAC encoder for `config`.
    pub fn new(
        parameters: codec::Parameters,
        input_time_base: Rational,
        config: &AudioEncoderConfig,
    ) -> Result<Self, MediaError> {
        let context =
            codec::context::Context::from_parameters(parameters).map_err(processing("reading audio parameters"))?;
        let decoder =
            context.decoder().audio().map_err(|e| MediaError::Unsupported(format!("cannot decode the audio: {e}")))?;
        let channels = u32::from(decoder.channels()).clamp(1, config.max_channels.clamp(1, 2));
        let codec = encoder::find(codec::Id::AAC)
            .ok_or_else(|| MediaError::Unsupported("this FFmpeg build has no AAC encoder".into()))?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(processing("creating the AAC encoder"))?;
        enc.set_rate(config.sample_rate as i32);
        enc.set_channel_layout(layout_for(channels));
        enc.set_format(Sample::F32(ffmpeg::format::sample::Type::Planar));
        enc.set_bit_rate(config.bitrate_kbps as usize * 1000);
        enc.set_time_base(Rational(1, config.sample_rate as i32));
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = enc.open_as_with(codec, Dictionary::new()).map_err(|e| {
            MediaError::Processing(format!("opening the AAC encoder ({} Hz, {channels} ch): {e}", config.sample_rate))
        })?;
        Ok(Self { decoder, encoder, input_time_base, resampler: None })
    }

    /// The opened encoder, whose parameters make the muxer's audio track.
    pub fn encoder(&self) -> &encoder::Audio {
        &self.encoder
    }

    /// Time base of the packets this produces.
    pub fn time_base(&self) -> Rational {
        Rational(1, self.encoder.rate() as i32)
    }

    /// Feeds one source packet.
    pub fn send(&mut self, packet: &Packet) -> Result<(), MediaError> {
        match self.decoder.send_packet(packet) {
            Ok(()) | Err(ffmpeg::Error::InvalidData) => Ok(()),
            Err(e) => Err(processing("decoding audio")(e)),
        }
    }

    /// Drops what the decoder holds (after a seek).
    pub fn reset_decoder(&mut self) {
        self.decoder.flush();
    }

    /// Drains decoded audio through the resampler and encoder. `to_rel_us` maps an input timestamp in µs to the
    /// output timeline (None drops the frame: before the origin).
    pub fn receive(
        &mut self,
        mut to_rel_us: impl FnMut(i64) -> Option<i64>,
        out: &mut Vec<Packet>,
    ) -> Result<(), MediaError> {
        let mut decoded = frame::Audio::empty();
        loop {
            match received(self.decoder.receive_frame(&mut decoded)) {
                Ok(true) => {}
                Ok(false) => break,
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => return Err(processing("decoding audio")(e)),
            }
            let Some(ts) = decoded.timestamp() else { continue };
            let ts_us = ts.rescale(self.input_time_base, Rational(1, 1_000_000));
            let Some(rel_us) = to_rel_us(ts_us) else { continue };
            let rate = decoded.rate();
            decoded.set_pts(Some(rel_us.rescale(Rational(1, 1_000_000), Rational(1, rate as i32))));
            self.resample(&decoded, out)?;
        }
        Ok(())
    }

    /// Flushes the resampler and the encoder at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<Packet>) -> Result<(), MediaError> {
        if let Some(r) = self.resampler.as_mut() {
            if let Some(mut src) = r.graph.get("in") {
                src.source().flush().map_err(processing("flushing the resampler"))?;
            }
            self.drain_resampler(out)?;
        }
        self.encoder.send_eof().map_err(processing("flushing the AAC encoder"))?;
        self.receive_packets(out)
    }

    fn resample(&mut self, decoded: &frame::Audio, out: &mut Vec<Packet>) -> Result<(), MediaError> {
        let layout = match decoded.channel_layout().bits() {
            0 => layout_for(u32::from(decoded.channels())).bits(),
            bits => bits,
        };
        let input = (decoded.rate(), decoded.format(), layout);
        if self.resampler.as_ref().map(|r| r.input) != Some(input) {
            self.resampler = Some(Resampler::new(input, &self.encoder)?);
        }
        if let Some(r) = self.resampler.as_mut() {
            let mut src = r.graph.get("in").ok_or_else(|| MediaError::Processing("resampler input".into()))?;
            src.source().add(decoded).map_err(processing("resampling audio"))?;
        }
        self.drain_resampler(out)
    }

    fn drain_resampler(&mut self, out: &mut Vec<Packet>) -> Result<(), MediaError> {
        let mut resampled = frame::Audio::empty();
        loop {
            let Some(r) = self.resampler.as_mut() else { return Ok(()) };
            let mut sink = r.graph.get("out").ok_or_else(|| MediaError::Processing("resampler output".into()))?;
            if sink.sink().frame(&mut resampled).is_err() {
                return Ok(());
            }
            // Upsampling yields several AAC frames per input frame: drain between sends or the encoder refuses.
            self.encoder.send_frame(&resampled).map_err(processing("encoding audio"))?;
            self.receive_packets(out)?;
        }
    }

    fn receive_packets(&mut self, out: &mut Vec<Packet>) -> Result<(), MediaError> {
        loop {
            let mut packet = Packet::empty();
            if !received(self.encoder.receive_packet(&mut packet)).map_err(processing("encoding audio"))? {
                return Ok(());
            }
            // The encoder's priming packet has a negative timestamp, which a fragment cannot start with.
            if packet.pts().unwrap_or(0) < 0 {
                continue;
            }
            out.push(packet);
        }
    }
}

impl Resampler {
    fn new(input: (u32, Sample, u64), encoder: &encoder::Audio) -> Result<Self, MediaError> {
        let err = processing("building the audio resampler");
        let mut graph = filter::Graph::new();
        let args = format!(
            "time_base=1/{rate}:sample_rate={rate}:sample_fmt={}:channel_layout=0x{:x}",
            input.1.name(),
            input.2,
            rate = input.0
        );
        let find = |name| filter::find(name).ok_or_else(|| MediaError::Processing(format!("filter {name} missing")));
        graph.add(&find("abuffer")?, "in", &args).map_err(&err)?;
        graph.add(&find("abuffersink")?, "out", "").map_err(&err)?;
        // async fills gaps and trims overlaps so AAC timestamps stay continuous after source hiccups.
        let spec = format!(
            "aresample={rate}:async=1,aformat=sample_fmts=fltp:sample_rates={rate}:channel_layouts=0x{layout:x}",
            rate = encoder.rate(),
            layout = encoder.channel_layout().bits()
        );
        graph.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&spec)).map_err(&err)?;
        graph.validate().map_err(&err)?;
        if let Some(mut out) = graph.get("out") {
            out.sink().set_frame_size(encoder.frame_size());
        }
        Ok(Self { graph, input })
    }
}
