// The AudioWorklet processor of the WebCodecs renderer: the jitter buffer of jitter.js on the audio thread.
// Loaded by audio-out.js with audioWorklet.addModule. Messages in: {type: "push", media, planes} (decoded
// audio, media time in s), {type: "picture", media, at} (JitterBuffer.picture, `at` in context ms),
// {type: "flush"}, {type: "floor", ms} (JitterBuffer.setFloor). Messages out, every REPORT_QUANTA render quanta: {type: "report", contextTime, mediaTime,
// rate, playing, level, margin, underruns, syncDrops, droppedSeconds}, where
// mediaTime is the media time of the first sample of the quantum that starts at contextTime (null when
// silent): what audio-out.js needs to know which media time is heard when.

import { JitterBuffer } from "./jitter.js";

const REPORT_QUANTA = 16; // ~43 ms at 48 kHz

class JitterProcessor extends AudioWorkletProcessor {
  constructor({ processorOptions }) {
    super();
    const { inputRate, channels, jitter } = processorOptions;
    this.buffer = new JitterBuffer(inputRate, channels, sampleRate, jitter);
    this.quanta = 0;
    this.port.onmessage = ({ data }) => {
      if (data.type === "push") this.buffer.push(data.media, data.planes, currentTime * 1000);
      else if (data.type === "picture") this.buffer.picture(data.media, data.at);
      else if (data.type === "flush") this.buffer.flush();
      else if (data.type === "floor") this.buffer.setFloor(data.ms);
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const media = this.buffer.playing ? this.buffer.mediaTime() : null;
    const at = currentTime;
    const result = this.buffer.pull(out, out[0].length, at * 1000);
    if (++this.quanta % REPORT_QUANTA === 0 || result.underrun) {
      const b = this.buffer;
      this.port.postMessage({
        type: "report",
        contextTime: at,
        mediaTime: result.played && result.dropped === 0 ? media : null,
        rate: b.rate, // media seconds per second of context time
        playing: b.playing,
        level: b.level(),
        margin: b.margin,
        underruns: b.underruns,
        syncDrops: b.syncDrops,
        droppedSeconds: b.droppedSeconds,
      });
    }
    return true;
  }
}

registerProcessor("mqtt-video-jitter", JitterProcessor);
