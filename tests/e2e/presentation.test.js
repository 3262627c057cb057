// Table tests of the WebCodecs renderer's video output: which one is used, and when the frames drawn into a visible
// canvas reach the screen (client/presentation.js).

import { test } from "node:test";
import assert from "node:assert/strict";
import { Presentation } from "../../client/presentation.js";

test("a frame drawn before an animation frame is on screen one refresh after it; nothing new, nothing shown", () => {
  const p = new Presentation();
  // [event, arg(s), expected: null, or [mediaTime, presentationTime, expectedDisplayTime]]
  const rows = [
    ["tick", 0, null],
    ["draw", [1.0, 5], undefined],
    ["tick", 16, [1.0, 5, 32]], // the first interval measured: 16 ms
    ["tick", 32, null], // the same picture again
    ["draw", [1.033, 40], undefined],
    ["tick", 48, [1.033, 40, 64]],
    // drawn after the animation frame's timestamp but before its callbacks ran: still in that picture
    ["draw", [1.067, 65], undefined],
    ["tick", 64, [1.067, 65, 80]],
  ];
  for (const [event, arg, want] of rows) {
    if (event === "draw") {
      p.draw(...arg);
      continue;
    }
    const got = p.tick(arg);
    if (want === null) assert.equal(got, null, `tick ${arg}`);
    else assert.deepEqual(got, { mediaTime: want[0], presentationTime: want[1], expectedDisplayTime: want[2] }, `tick ${arg}`);
  }
  assert.equal(p.overdrawn, 0);
});

test("of two frames drawn within one refresh only the last is seen, and the first is counted", () => {
  const p = new Presentation();
  p.tick(0);
  p.draw(2.0, 3);
  p.draw(2.033, 9);
  assert.deepEqual(p.tick(16.7), { mediaTime: 2.033, presentationTime: 9, expectedDisplayTime: 33.4 });
  assert.equal(p.overdrawn, 1);
});

test("the refresh interval is the median spacing; a background tab's long gap does not count", () => {
  const p = new Presentation();
  assert.equal(p.interval(), 1000 / 60, "60 Hz until measured");
  // a 120 Hz display with one late animation frame and a tab that was hidden for 2 s
  for (const ts of [0, 8.3, 16.7, 25, 45, 53.3, 2053.3, 2061.6, 2070]) p.tick(ts);
  assert.ok(Math.abs(p.interval() - 8.3) < 0.1, `interval ${p.interval()}`);
  p.draw(3.0, 2071);
  const shown = p.tick(2078.3);
  assert.ok(Math.abs(shown.expectedDisplayTime - 2086.6) < 0.1, `shown at ${shown.expectedDisplayTime}`);
});

test("a presentation started over forgets the frame it had not shown and what it overdrew", () => {
  const p = new Presentation();
  p.tick(0);
  p.draw(4.0, 1);
  p.draw(4.033, 2);
  p.reset();
  assert.equal(p.tick(16), null);
  assert.equal(p.overdrawn, 0);
});

test("the video output: a track generator where the browser has one, else the canvas over the <video>", async () => {
  const { chooseVideoOutput } = await import("../../client/webcodecs-sink.js");
  const all = { generator: true, canvas: true };
  const noGenerator = { generator: false, canvas: true };
  // [asked, what the browser has, the <video> is in a document, chosen]
  const rows = [
    ["auto", all, true, "generator"],
    ["auto", noGenerator, true, "canvas"], // Firefox and Safari have no MediaStreamTrackGenerator
    ["auto", noGenerator, false, "captured"], // and a detached <video> has nowhere to put a canvas
    ["canvas", all, true, "canvas"],
    ["canvas", all, false, "generator"],
    ["generator", all, true, "generator"],
    ["generator", noGenerator, true, "canvas"],
    ["captured", all, true, "captured"],
  ];
  for (const [want, have, inDocument, chosen] of rows) {
    assert.equal(chooseVideoOutput(want, have, inDocument), chosen, `${want}, ${JSON.stringify(have)}, in a document: ${inDocument}`);
  }
});
