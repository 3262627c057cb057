// The live-edge controller of the MediaSource player, as a pure state machine: it is given what the <video>
// shows (a view: playhead, buffered ranges, paused, ...) and `now`, and answers with what to do (seek, set the
// playback rate, start playing, remove old media). No DOM, no clock: tests/e2e/live-edge.test.js drives it
// with tables.
//
// What it does (shared/DESIGN.md, "Browser"): hold the playhead `target()` behind the end of the newest
// buffered range by nudging playbackRate; jump when far behind, when the playhead sits outside the newest
// range (a join, a gap after a source restart) or is stuck with media ahead; raise the target after a stall
// with media buffered (Chromium's audio renderer underflows near 100 ms) and let it decay while playback stays
// smooth; trim media long played.

/** Every setting of the controller (the Player's options of the same names). */
export const LIVE_EDGE_DEFAULTS = Object.freeze({
  /** Seconds the playhead is held behind the live edge; null: 0.12 with audio, 0.06 video-only. */
  targetLatency: null,
  /** The target grows by this much (s) after each stall with media buffered, up to maxTargetLatency, and
   * shrinks back by targetDecay every targetDecayMs of smooth playback. */
  stallTargetStep: 0.04,
  maxTargetLatency: 0.5,
  targetDecay: 0.01,
  targetDecayMs: 10000,
  /** A media failure (a decode error, a SourceBuffer error) comes with stalls: those within this many ms
   * before it and after it are its symptoms, not a sign that the target is too small, and raise nothing. */
  failureWindowMs: 5000,
  /** Jump (seek) to the live edge when more than this many seconds behind it. */
  maxBehind: 1.0,
  /** Jump to the live edge when more than this many seconds further behind than the target for catchUpAfterMs
   * (after a stall: draining 0.3 s at 5 % faster takes 6 s). */
  catchUpSeek: 0.3,
  catchUpAfterMs: 1000,
  /** For settleMs after joining, the rate controller uses settleRateGain and settleRateRange: Chromium starts
   * playback only with ~0.2 s buffered (after a seek too, so jumping does not help), and at rateGain it takes
   * ~5 s to reach the target. */
  settleMs: 4000,
  settleRateGain: 1.5,
  settleRateRange: 0.2,
  /** playbackRate stays within [1 - rateRange, 1 + catchUpRateRange]: slowing down is gentle (the buffer is
   * thin then); catching up may be quicker. */
  rateRange: 0.05,
  catchUpRateRange: 0.1,
  /** playbackRate change per second of distance from the target (proportional gain). */
  rateGain: 0.5,
  /** No rate change while the distance to the target is within ± this many seconds. */
  rateDeadband: 0.01,
  /** A paused or not-yet-playable <video> (readyState under 2) with more than recoverAhead seconds beyond
   * the target buffered, and no playback for recoverAfterMs: jump to the live edge and play() again. WebKitGTK
   * under CPU load can leave the element paused at readyState 1 with 20 s buffered, for good. */
  recoverAhead: 0.5,
  recoverAfterMs: 2000,
  /** Seconds of media kept behind the playhead; older media is removed from the SourceBuffer. */
  keepBuffer: 10,
  /** Start playing (video.play()) as soon as there is something to show. */
  autoplay: true,
});

/**
 * What the controller is told about the <video> and its SourceBuffer at `now`:
 * {currentTime, paused, seeking, readyState, ranges: [[start, end], ...] (video.buffered, ascending),
 *  busy (an append or remove is running or queued), removePending}.
 * @typedef {object} View
 */

/** Seconds buffered ahead of the playhead in `view` (0 when the playhead is outside every range). */
export function bufferAhead(view) {
  const t = view.currentTime;
  for (const [start, end] of view.ranges) if (t >= start && t <= end) return end - t;
  return 0;
}

export class LiveEdge {
  /** @param {Partial<typeof LIVE_EDGE_DEFAULTS>} options */
  constructor(options = {}) {
    this.options = { ...LIVE_EDGE_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in LIVE_EDGE_DEFAULTS) this.options[k] = v;
    this.hasAudio = false;
    this.boosts = []; // [{at, step}]: the stalls that raised the target, newest last (for failed())
    this.boost = 0; // seconds added to the target after stalls
    this.lastStallAt = -Infinity;
    this.lastDecayAt = -Infinity;
    this.lastTrimAt = -Infinity;
    this.forgiveUntil = -Infinity; // stalls before this are a failure's aftermath
    this.stalls = 0;
    this.jumps = 0;
    this.recoveries = 0; // jumps with a play() out of a stuck paused <video>
    this.linkJitter = 0; // seconds the link delays fragments beyond its pace (link-meter.js), a floor for the boost
    this.attach(-Infinity);
  }

  /** Seconds the controller holds the playhead behind the live edge. */
  target() {
    return Math.min(this.options.maxTargetLatency, this.baseTarget() + Math.max(this.boost, this.linkJitter));
  }

  /**
   * The link delays fragments by up to `seconds` beyond its own pace (a keyframe that takes longer than the
   * others to come: link-meter.js measures it). The target keeps that much more, so that such a fragment
   * finds media still buffered: the stall it would cause is known before it happens.
   */
  setLinkJitter(seconds) {
    this.linkJitter = Math.max(0, seconds);
  }

  /**
   * Another rendition plays from now on (a switch, session.js): it may come with the backlog that made the
   * page switch down, so the playhead catches up as after a join (a seek at once when far behind, the rate
   * settling faster); unlike after a join, stalls still count.
   */
  switched(now) {
    this.switchedAt = now;
  }

  /** The configured target: `targetLatency`, or 0.12 s with audio, 0.06 s video-only. */
  baseTarget() {
    if (this.options.targetLatency != null) return this.options.targetLatency;
    return this.hasAudio ? 0.12 : 0.06;
  }

  /** A new MediaSource (a play, a rebuild): what was learnt about the old one's playhead is forgotten. */
  attach(now) {
    this.smoothedBehind = null;
    this.farSince = null;
    this.lastTime = 0;
    this.lastAdvanceAt = -Infinity; // the playhead last moved by playing (not by a seek)
    this.lastProgressAt = now; // ... by playing or by a seek: for the stall watchdog
    this.lastSeekAt = -Infinity;
    this.lastPlayedAt = -Infinity; // the playhead last moved with the element playing (for the recovery)
    this.failedRecoveries = 0; // recoveries since the element last played
    this.lastRecoverAt = -Infinity;
    this.seekingSince = null; // when the <video> was first seen seeking in the seek that runs
    this.playRequested = false;
    this.joinedAt = now;
    this.switchedAt = -Infinity; // the last rendition switch
    this.lastVideoAt = -Infinity; // when the last fragment carrying video arrived
    this.lastVideoTime = null; // media time of the last video fragment, its usual spacing, and a hole after it
    this.videoInterval = null;
    this.gap = null;
    this.skipToGap = false;
  }

  /**
   * A fragment carrying video starting at `mediaTime` (s) was queued. Video that jumps ahead in media time
   * while audio went on is a hole the server left by holding back damaged input up to this keyframe:
   * browsers stop at such a hole, and may report one buffered range across it, so tick() steps over it as
   * soon as the keyframe is in.
   */
  videoArrived(mediaTime, now) {
    this.lastVideoAt = now;
    if (mediaTime === null) return;
    if (this.lastVideoTime !== null) {
      const d = mediaTime - this.lastVideoTime;
      const interval = this.videoInterval ?? 1 / 30;
      if (d > 0 && d <= 0.2) this.videoInterval = this.videoInterval === null ? d : this.videoInterval * 0.9 + d * 0.1;
      else if (d > Math.max(0.1, 3 * interval)) this.gap = { start: this.lastVideoTime + interval, end: mediaTime };
    }
    this.lastVideoTime = mediaTime;
  }

  /** An init segment was queued: media starts (again) with a burst, and the rate settles afresh. */
  joined(now) {
    this.joinedAt = now;
  }

  /** Whether the playhead moved by playing within the last `withinMs` (and has ever moved). */
  advancing(now, withinMs = 500) {
    return now - this.lastAdvanceAt < withinMs && this.lastTime > 0;
  }

  /**
   * The media failed and the pipeline is rebuilt: the stalls of the last failureWindowMs were the failure's
   * symptoms, so the target they raised goes back, and stalls in the next failureWindowMs raise nothing.
   */
  failed(now) {
    const since = now - this.options.failureWindowMs;
    while (this.boosts.length && this.boosts[this.boosts.length - 1].at >= since) {
      this.boost = Math.max(0, this.boost - this.boosts.pop().step);
    }
    if (this.boost < 1e-9) this.boost = 0;
    this.forgiveUntil = now + this.options.failureWindowMs;
  }

  /**
   * Fragments were lost on the way (the gateway shed them for a link slower than the stream, protocol 2): the
   * stalls around the loss are the link's, which no larger target would have helped, so they raise nothing,
   * as a failure's do.
   */
  lost(now) {
    this.failed(now);
    // What is still buffered before the hole is as old as the backlog that made the gateway shed: go over
    // the hole as soon as the keyframe after it is in, not once the playhead gets there.
    this.skipToGap = true;
  }

  /**
   * The <video> fired `waiting`. A stop during playback with media ahead means the renderers wanted more than
   * the target leaves: the target grows (returns {ahead, before, after} in seconds), or null when it does not
   * count (not playing, after a seek or join, starvation, a repeat of the same stall, a failure's aftermath).
   */
  stall(view, now) {
    if (view.seeking || view.paused) return null;
    // Only a stop during playback counts: not the wait after a seek or before the first frame.
    if (this.lastAdvanceAt < this.lastSeekAt || now - this.lastSeekAt < 500 || now - this.joinedAt < 500) return null;
    // Chromium fires `waiting` again each time a thin buffer runs dry while it refills: one stall, not four
    // (counting each took the target from 60 to 220 ms within 0.2 s).
    if (now - this.lastStallAt < 1000) return null;
    const ahead = bufferAhead(view);
    if (ahead < 0.02) return null; // plain starvation: nothing arrived, a bigger target would not have helped
    // Fragments keep coming without video: the server is holding back damaged video until the next keyframe
    // (a hole in the source, not a renderer that wanted more buffer). tick() steps over the hole at its end.
    if (now - this.lastVideoAt > 100) return null;
    this.stalls++;
    this.lastStallAt = now;
    const before = this.target();
    if (now >= this.forgiveUntil) {
      const step = Math.min(this.options.maxTargetLatency - this.baseTarget(), this.boost + this.options.stallTargetStep) - this.boost;
      if (step > 0) {
        this.boost += step;
        this.boosts.push({ at: now, step });
        if (this.boosts.length > 50) this.boosts.shift();
      }
    }
    return { ahead, before, after: this.target() };
  }

  /** A seek action; `recovery`: with a play() out of a stuck <video> (the sink tells it apart). */
  _seek(to, why, now, recovery = false) {
    this.jumps++;
    this.smoothedBehind = null;
    this.farSince = null;
    this.lastSeekAt = now;
    this.lastTime = to; // a seek is not playback progress
    this.lastProgressAt = now;
    return recovery ? { type: "seek", to, why, recovery } : { type: "seek", to, why };
  }

  /**
   * The recovery of a stuck <video> (see recoverAfterMs): appends a seek to `to` and a play to `actions` and
   * returns true when it is due; `behind`: seconds from the playhead to the end of the newest range.
   */
  _recover(view, behind, to, now, actions) {
    const o = this.options;
    const sincePlayed = now - Math.max(this.lastPlayedAt, this.joinedAt);
    const wait = o.recoverAfterMs * 2 ** Math.min(4, this.failedRecoveries);
    if (!o.autoplay || behind <= this.target() + o.recoverAhead || sincePlayed <= o.recoverAfterMs || now - this.lastRecoverAt <= wait) return false;
    this.failedRecoveries++; // (back to 0 once it plays)
    this.recoveries++;
    this.lastRecoverAt = now;
    this.seekingSince = null; // the new seek has its own time
    this.playRequested = true;
    const state = `${view.paused ? "paused" : "playing"}${view.seeking ? ", seeking" : ""} at readyState ${view.readyState}`;
    actions.push(this._seek(to, `stuck ${state} with ${behind.toFixed(2)} s buffered ahead for ${(sincePlayed / 1000).toFixed(1)} s`, now, true));
    actions.push({ type: "play" });
    return true;
  }

  /**
   * One control step; runs on every append and on a timer. Returns the actions to take, in order:
   * {type: "play"}, {type: "seek", to, why}, {type: "rate", rate}, {type: "remove", start, end}.
   * @param {View} view
   */
  tick(view, now) {
    const actions = [];
    if (!view.ranges.length) return actions;
    const o = this.options;
    const t = view.currentTime;
    const [start, end] = view.ranges[view.ranges.length - 1];
    const target = this.target();
    const live = Math.max(start, end - target);
    if (view.seeking) {
      // A seek runs: nothing to decide until it ends, unless it never does (WebKitGTK under CPU load: paused
      // at readyState 1, seeking, with 20 s buffered, for good): then the recovery below, seeking again.
      this.seekingSince ??= now;
      if (now - this.seekingSince > o.recoverAfterMs) this._recover(view, end - t, end - target, now, actions);
      return actions;
    }
    this.seekingSince = null;

    if (t !== this.lastTime) {
      this.lastTime = t;
      this.lastAdvanceAt = now;
      this.lastProgressAt = now;
      // (WebKit may round a seek's target: only a playing element's moves are playback for the recovery.)
      if (!view.paused && view.readyState >= 2) {
        this.lastPlayedAt = now;
        this.failedRecoveries = 0;
      }
    }
    if (this.gap && t >= this.gap.end) this.gap = null;
    if (this.gap && (this.skipToGap || t >= this.gap.start - 0.25) && end >= this.gap.end && !view.busy) {
      const over = this.gap;
      this.gap = null;
      this.skipToGap = false;
      actions.push(this._seek(Math.max(over.end, end - target), `over ${((over.end - over.start) * 1000).toFixed(0)} ms of held-back video`, now));
      return actions;
    }

    if (o.autoplay && view.paused && !this.playRequested && view.readyState >= 2) {
      this.playRequested = true;
      actions.push({ type: "play" });
    }

    // Outside the newest range: the start of a play (media time does not start at 0), a late join, or a gap
    // left by a source restart. Go to the live edge of the newest range, which starts at a keyframe.
    if (t < start - 0.001 || t > end + 0.25) {
      // A joiner gets the GOP so far in one burst: append it all first, then seek once.
      if (view.busy) return actions;
      actions.push(this._seek(live, "playhead outside the newest range", now));
      this.joinedAt = now;
      return actions;
    }
    const behind = end - t;
    // Stuck: paused (or with nothing to show) long after the playhead last played, with plenty buffered: no
    // event will come to start it again (the play() may have been refused or aborted, or the engine paused
    // itself). Jump to the live edge and ask to play again, at most once per recoverAfterMs; muted
    // autoplay is the sink's policy as for the first play. Not with autoplay off: a paused player is the user's.
    // One that did not help waits twice as long before the next (a page the browser keeps paused, e.g. hidden).
    if ((view.paused || view.readyState < 2) && this._recover(view, behind, end - target, now, actions)) return actions;
    if (behind > o.maxBehind) {
      actions.push(this._seek(end - target, `${behind.toFixed(2)} s behind the live edge`, now));
      return actions;
    }
    // Stalled with media ahead (e.g. a hole inside a range that the decoder will not cross): step over it.
    if (!view.paused && now - this.lastProgressAt > 1500 && behind > target + 0.3) {
      actions.push(this._seek(end - target, "stalled with media ahead", now));
      return actions;
    }

    if (!view.paused) {
      this.smoothedBehind = this.smoothedBehind === null ? behind : this.smoothedBehind * 0.8 + behind * 0.2;
      const err = this.smoothedBehind - target;
      // Far behind for a while (a stall, a slow start): jump rather than crawl back at a few percent.
      if (err > o.catchUpSeek) {
        this.farSince ??= now;
        // Right after joining, the GOP burst may still have been arriving at the first seek: jump again at once.
        const justJoined = now - Math.max(this.joinedAt, this.switchedAt) < 2000;
        if (justJoined || now - this.farSince > o.catchUpAfterMs) {
          actions.push(this._seek(end - target, `${(err * 1000).toFixed(0)} ms behind the target for ${o.catchUpAfterMs} ms`, now));
          return actions;
        }
      } else {
        this.farSince = null;
      }
      const settling = now - Math.max(this.joinedAt, this.switchedAt) < o.settleMs;
      const gain = settling ? o.settleRateGain : o.rateGain;
      const up = settling ? o.settleRateRange : o.catchUpRateRange;
      let rate = 1;
      if (Math.abs(err) > o.rateDeadband) rate = 1 + Math.max(-o.rateRange, Math.min(up, err * gain));
      rate = Math.round(rate * 200) / 200; // steps of 0.005: fewer rate changes for the audio renderer
      actions.push({ type: "rate", rate });
    }

    if (this.boost > 0 && now - this.lastStallAt > o.targetDecayMs && now - this.lastDecayAt > o.targetDecayMs) {
      this.lastDecayAt = now;
      this.boost = Math.max(0, this.boost - o.targetDecay);
      if (this.boost < 1e-9) this.boost = 0;
      this.boosts.length = 0; // decayed boosts are no longer a recent failure's to undo
    }

    // Trim media far behind the playhead so the SourceBuffer never fills up.
    if (!view.removePending && now - this.lastTrimAt > 2000 && t - view.ranges[0][0] > o.keepBuffer + 2) {
      this.lastTrimAt = now;
      actions.push({ type: "remove", start: 0, end: t - o.keepBuffer });
    }
    return actions;
  }
}
