// What the browser lets this page use for the WebCodecs renderer, and why not when it does not. Pure over a
// `globals` object (globalThis in the page, fakes in tests/e2e/capabilities.test.js), so that every way a
// browser can fall short has one reason to show ("not a secure context", "no VideoDecoder", ...).
//
// WebCodecs (VideoDecoder, AudioDecoder) and AudioContext.audioWorklet exist only in a secure context: https,
// or http on localhost / 127.0.0.1. A page opened as http://nas.lan:8080/ has none of them, and plays with
// MediaSource instead. Chromium still exposes the AudioWorkletNode constructor there, so the worklet is
// looked for where it is missing, on the context's prototype.

/** The codecs of a MIME type's `codecs` parameter: `video/mp4; codecs="avc1.42C01E, mp4a.40.2"` -> both. */
export function mimeCodecs(mime) {
  const m = /codecs\s*=\s*"?([^";]*)"?/i.exec(mime ?? "");
  return m ? m[1].split(",").map((c) => c.trim()).filter(Boolean) : [];
}

/** Whether codec string `c` names an audio codec. */
export const isAudioCodec = (c) => /^(mp4a|opus|flac|ac-3|ec-3|mp3)/i.test(c);

/** The ways frames can reach the screen: a track generator into the <video>, or a canvas (shown or captured). */
export function videoOutputs(g = globalThis) {
  return {
    generator: typeof g.MediaStreamTrackGenerator === "function",
    canvas: typeof g.HTMLCanvasElement === "function" && typeof g.HTMLCanvasElement.prototype?.captureStream === "function",
  };
}

/** Whether an AudioContext here has an `audioWorklet` (a secure-context-only attribute). */
export function hasAudioWorklet(g = globalThis) {
  const proto = g.AudioContext?.prototype;
  return !!proto && "audioWorklet" in proto && typeof g.AudioWorkletNode === "function";
}

/**
 * Whether `navigator` is Linux WebKit's: WebKitGTK (Epiphany, MiniBrowser, ...) or WPE, not Apple's Safari
 * (macOS, iOS) and not Chromium on Linux (which says "AppleWebKit/537.36 ... Chrome/"). By the user agent:
 * the engine's bug below cannot be detected by trying it, since trying it kills the page.
 */
export function isLinuxWebKit(navigator) {
  const ua = navigator?.userAgent ?? "";
  if (!/AppleWebKit\//.test(ua) || /Android|Chrome\/|Chromium\/|CriOS\/|Edg\/|OPR\//.test(ua)) return false;
  return /\b(X11|Linux|FreeBSD|OpenBSD|NetBSD)\b/.test(ua) || /\bWPE\b/.test(ua);
}

/**
 * Why this page cannot use WebCodecs at all, whatever the stream (a short reason), or null when it can;
 * `audio`: the stream has sound (an AudioDecoder and an AudioWorklet are needed too).
 */
export function webCodecsBlocker(g = globalThis, { audio = true } = {}) {
  // First: in a non-secure context everything below is missing, and this is the reason to tell.
  if (!g.isSecureContext) return "not a secure context";
  // WebKitGTK 2.50 (and WPE, the same code) kills the web process ("free(): invalid pointer") on
  // AudioData.copyTo(), which the renderer calls for every audio frame (audio-out.js). Off for video-only
  // streams too: the same play can gain sound later (a source restart, a rendition switch), and the renderer
  // cannot change then without a visible restart. MediaSource plays there.
  if (isLinuxWebKit(g.navigator)) return "AudioData.copyTo crashes WebKitGTK";
  if (typeof g.VideoDecoder !== "function") return "no VideoDecoder";
  const out = videoOutputs(g);
  if (!out.generator && !out.canvas) return "no way to show decoded frames";
  if (audio) {
    if (typeof g.AudioDecoder !== "function") return "no AudioDecoder";
    if (typeof g.AudioContext !== "function") return "no AudioContext";
    if (!hasAudioWorklet(g)) return "no AudioWorklet";
  }
  return null;
}

/**
 * Why WebCodecs cannot play `mime` here (resolves to a short reason), or null when it can: the page's
 * context (webCodecsBlocker), then the decoders' isConfigSupported for the stream's codecs.
 */
export async function webCodecsIssue(mime, g = globalThis) {
  const codecs = mimeCodecs(mime);
  const video = codecs.filter((c) => !isAudioCodec(c));
  const audio = codecs.filter(isAudioCodec);
  const blocker = webCodecsBlocker(g, { audio: audio.length > 0 });
  if (blocker) return blocker;
  if (video.length !== 1 || audio.length > 1) return `not one video and at most one audio codec in "${mime}"`;
  const ask = async (Decoder, config) => {
    try {
      return (await Decoder.isConfigSupported(config)).supported ? null : `codec not supported: ${config.codec}`;
    } catch (e) {
      return `codec not supported: ${config.codec} (${e?.message ?? e})`;
    }
  };
  const videoIssue = await ask(g.VideoDecoder, { codec: video[0], optimizeForLatency: true });
  if (videoIssue || !audio.length) return videoIssue;
  // The real rate and channels come with the init segment; these only ask about the codec.
  return ask(g.AudioDecoder, { codec: audio[0], sampleRate: 48000, numberOfChannels: 2 });
}
