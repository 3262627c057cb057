//! The few FFmpeg calls ffmpeg-next 9.0 does not wrap. Every `unsafe` block of the crate lives here.

use ffmpeg::ffi;
use ffmpeg::format::context::{Input, Output};
use ffmpeg::{Dictionary, Error};
use ffmpeg_next as ffmpeg;
use std::ffi::CString;
use std::ptr;

/// Opens an input with an optional forced demuxer (e.g. `lavfi`), options and an interrupt callback, then probes it.
pub fn open_input<F>(url: &str, format: Option<&str>, options: Dictionary, interrupt: F) -> Result<Input, Error>
where
    F: FnMut() -> bool + Send + 'static,
{
    let c_url = CString::new(url).map_err(|_| Error::InvalidData)?;
    let c_format = format.map(CString::new).transpose().map_err(|_| Error::InvalidData)?;
    // SAFETY: mirrors ffmpeg-next's `input_with_interrupt_and_dictionary`: the context is allocated here,
    // the interrupt closure is owned by the guard that the returned `Input` keeps alive, the dictionary is
    // disowned for the call and re-owned after it, and the context is freed on every error path.
    unsafe {
        let input_format = match &c_format {
            Some(name) => {
                let found = ffi::av_find_input_format(name.as_ptr());
                if found.is_null() {
                    return Err(Error::DemuxerNotFound);
                }
                found
            }
            None => ptr::null(),
        };
        let mut ps = ffi::avformat_alloc_context();
        if ps.is_null() {
            return Err(Error::Other { errno: ffmpeg::error::ENOMEM });
        }
        let interrupt = ffmpeg::util::interrupt::new(Box::new(interrupt));
        (*ps).interrupt_callback = interrupt.interrupt;
        let mut opts = options.disown();
        let res = ffi::avformat_open_input(&mut ps, c_url.as_ptr(), input_format, &mut opts);
        Dictionary::own(opts);
        if res < 0 {
            // avformat_open_input frees the context itself on failure.
            return Err(Error::from(res));
        }
        let res = ffi::avformat_find_stream_info(ps, ptr::null_mut());
        if res < 0 {
            ffi::avformat_close_input(&mut ps);
            return Err(Error::from(res));
        }
        Ok(Input::wrap_with_interrupt(ps, interrupt.guard))
    }
}

/// Flushes the muxer's pending fragment and its I/O buffer (`av_write_frame(ctx, NULL)`), so a fragment leaves now.
pub fn flush_fragment(output: &mut Output) -> Result<(), Error> {
    // SAFETY: `output` owns a valid, header-written muxer context; a NULL packet is the documented way to
    // ask a muxer with AVFMT_ALLOW_FLUSH (mov/mp4) to flush its buffered data.
    let res = unsafe { ffi::av_write_frame(output.as_mut_ptr(), ptr::null_mut()) };
    if res < 0 {
        return Err(Error::from(res));
    }
    flush_io(output);
    Ok(())
}

/// Pushes what the muxer's AVIO buffer holds to our writer.
pub fn flush_io(output: &mut Output) {
    // SAFETY: `pb` is the custom AVIO context installed by `output_to_stream`, alive as long as `output`.
    unsafe {
        let pb = (*output.as_mut_ptr()).pb;
        if !pb.is_null() {
            ffi::avio_flush(pb);
        }
    }
}

/// Sets a copied stream's codec tag for the MP4 muxer: 0 lets it pick its own (`avc1`, `mp4a`), and HEVC
/// gets `hvc1` (parameter sets in the `hvcC` only), the sample entry Safari plays; the muxer's own would be `hev1`.
pub fn set_codec_tag(parameters: &mut ffmpeg::codec::Parameters, tag: [u8; 4]) {
    // SAFETY: the parameters are owned by a live output stream; codec_tag is a plain integer field.
    unsafe { (*parameters.as_mut_ptr()).codec_tag = u32::from_le_bytes(tag) };
}

/// The codec extradata of stream parameters (SPS/PPS for H.264, AudioSpecificConfig for AAC).
pub fn extradata(parameters: &ffmpeg::codec::Parameters) -> Vec<u8> {
    // SAFETY: extradata points to extradata_size readable bytes, or is NULL.
    unsafe {
        let par = parameters.as_ptr();
        let (data, size) = ((*par).extradata, (*par).extradata_size);
        if data.is_null() || size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(data, size as usize).to_vec()
        }
    }
}

/// Replaces the codec extradata of stream parameters (used when a source sends SPS/PPS only in-band).
pub fn set_extradata(parameters: &mut ffmpeg::codec::Parameters, bytes: &[u8]) -> Result<(), Error> {
    let padded = bytes.len() + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
    let size = i32::try_from(bytes.len()).map_err(|_| Error::InvalidData)?;
    // SAFETY: the new buffer comes from av_mallocz with FFmpeg's required zeroed padding, the old one is
    // released with av_freep, and the parameters are exclusively borrowed for the swap.
    unsafe {
        let par = parameters.as_mut_ptr();
        let buf = ffi::av_mallocz(padded) as *mut u8;
        if buf.is_null() {
            return Err(Error::Other { errno: ffmpeg::error::ENOMEM });
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        ffi::av_freep(&mut (*par).extradata as *mut *mut u8 as *mut std::ffi::c_void);
        (*par).extradata = buf;
        (*par).extradata_size = size;
    }
    Ok(())
}

/// Sets the picture size, profile and level of video parameters the demuxer left unknown (read from the
/// stream's own SPS).
pub fn set_video_facts(parameters: &mut ffmpeg::codec::Parameters, width: u32, height: u32, profile: i32, level: i32) {
    // SAFETY: plain integer fields of parameters exclusively borrowed.
    unsafe {
        let par = parameters.as_mut_ptr();
        (*par).width = i32::try_from(width).unwrap_or(0);
        (*par).height = i32::try_from(height).unwrap_or(0);
        (*par).profile = profile;
        (*par).level = level;
    }
}

/// Sets the sample rate, channel count and profile of audio parameters the demuxer left unknown (read from
/// the stream's own ADTS headers).
pub fn set_audio_facts(parameters: &mut ffmpeg::codec::Parameters, sample_rate: u32, channels: u32, profile: i32) {
    let channels = i32::try_from(channels).unwrap_or(1);
    // SAFETY: integer fields of parameters exclusively borrowed; the channel layout is released by
    // av_channel_layout_uninit before av_channel_layout_default fills it in again.
    unsafe {
        let par = parameters.as_mut_ptr();
        (*par).sample_rate = i32::try_from(sample_rate).unwrap_or(0);
        (*par).profile = profile;
        ffi::av_channel_layout_uninit(&mut (*par).ch_layout);
        ffi::av_channel_layout_default(&mut (*par).ch_layout, channels);
        (*par).channels = channels;
        (*par).channel_layout = (*par).ch_layout.u.mask;
    }
}

/// The decoder's error flags on a decoded picture (concealed errors, missing references); 0 when clean.
pub fn decode_error_flags(frame: &ffmpeg::frame::Video) -> i32 {
    // SAFETY: a plain integer field of a frame the decoder filled in.
    unsafe { (*frame.as_ptr()).decode_error_flags }
}

/// The codec profile and pixel (or sample) format a stream declares.
pub fn profile_and_format(parameters: &ffmpeg::codec::Parameters) -> (i32, i32) {
    // SAFETY: plain integer fields of valid parameters.
    unsafe {
        let par = parameters.as_ptr();
        ((*par).profile, (*par).format)
    }
}

/// Plain numbers from codec parameters that ffmpeg-next does not expose without opening a codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodecFacts {
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Audio sample rate.
    pub sample_rate: u32,
    /// Audio channels.
    pub channels: u32,
    /// Declared bitrate.
    pub bit_rate: u64,
    /// Frames of reordering delay (B-frames) the video declares.
    pub video_delay: u32,
}

/// Reads [`CodecFacts`] from stream parameters.
pub fn codec_facts(parameters: &ffmpeg::codec::Parameters) -> CodecFacts {
    // SAFETY: plain integer fields of valid parameters.
    unsafe {
        let par = parameters.as_ptr();
        CodecFacts {
            width: (*par).width.max(0) as u32,
            height: (*par).height.max(0) as u32,
            sample_rate: (*par).sample_rate.max(0) as u32,
            channels: (*par).ch_layout.nb_channels.max(0) as u32,
            bit_rate: (*par).bit_rate.max(0) as u64,
            video_delay: (*par).video_delay.max(0) as u32,
        }
    }
}

/// The sender's wall clock (µs since the Unix epoch) at media time 0, which RTSP learns from RTCP sender
/// reports; None until the first report, or for inputs that have no such clock.
pub fn start_time_realtime(input: &Input) -> Option<i64> {
    // SAFETY: reads a plain integer field of the live format context owned by `input`.
    let value = unsafe { (*input.as_ptr()).start_time_realtime };
    (value != ffi::AV_NOPTS_VALUE && value > 0).then_some(value)
}

/// glibc's mmap threshold for a process that churns codecs: 128 KiB, the default's starting value.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Keeps freed frame-sized buffers from staying in the process: glibc raises its mmap threshold to the size
/// of every large block freed (up to 32 MiB), after which decoded pictures, encoder lookahead and fragment
/// buffers come from malloc arenas, where every stream start and stop leaves them scattered and resident
/// (the soak, viewers coming and going for 10 minutes: RSS 68 -> 97 MiB and still rising at 20 minutes; with
/// the threshold fixed it levels off at 78 MiB). A fixed threshold keeps them in their own mappings, returned
/// on free. `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes malloc's tuning; it is called once, before any worker thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Sets the quality (lambda) a frame asks of an encoder with a fixed quantiser (`Flags::QSCALE`): the MJPEG
/// encoder takes the frame's, as the ffmpeg CLI's `-q:v` sets it.
pub fn set_frame_quality(frame: &mut ffmpeg::frame::Video, lambda: i32) {
    // SAFETY: the frame is exclusively borrowed and owns a valid AVFrame; quality is a plain integer field.
    unsafe { (*frame.as_mut_ptr()).quality = lambda };
}
