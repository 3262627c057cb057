// The page's link probe (client/link-probe.js): its timing as a table, its URL beside the broker's, and a
// probe of a real HTTP server that paces what it sends.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { probeLink, probeRate, probeUrl } from "../../client/link-probe.js";

test("the rate of the second half of the bytes, or a lower bound from the whole transfer", () => {
  const at = (pairs) => pairs.map(([ms, bytes]) => ({ at: ms, bytes }));
  const rows = [
    // a 16 KB burst at once, then 2 Mbit/s: 48 KB of the second half over 192 ms
    ["a token bucket's burst, then its rate", at([[10, 16_000], [74, 16_000], [138, 16_000], [202, 16_000], [266, 16_000], [330, 16_000]]), 0, { kbps: 2000, bound: false }],
    ["everything in one chunk: the whole transfer from the request", at([[20, 64_000]]), 0, { kbps: 25_600, bound: true }],
    ["the second half too quick to time: a lower bound", at([[10, 32_000], [11, 16_000], [12, 16_000]]), 0, { kbps: (64_000 * 8) / 12, bound: true }],
    ["faster than the clock: at least 5 ms", at([[0, 1000]]), 0, { kbps: 1600, bound: true }],
    ["nothing", [], 0, null],
  ];
  for (const [what, chunks, startedAt, want] of rows) {
    assert.deepEqual(probeRate(chunks, startedAt), want, what);
  }
});

test("the probe's URL is the gateway's, beside its WebSocket", () => {
  assert.equal(probeUrl("wss://cam.example:8443/mqtt", 57_000.4, "7"), "https://cam.example:8443/probe?bytes=57000&t=7");
  assert.equal(probeUrl("ws://198.19.1.1:8080/mqtt", 1000, "a b"), "http://198.19.1.1:8080/probe?bytes=1000&t=a%20b");
  assert.equal(probeUrl("mqtt://broker:1883", 1000, "1"), null, "not a WebSocket: no gateway");
  assert.equal(probeUrl("not a url", 1000, "1"), null);
});

test("a probe of a server that sends 64 KB at 4 Mbit/s measures about that; one that never ends times out", async () => {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith("/never")) {
      res.writeHead(200);
      res.write(Buffer.alloc(1000));
      return; // and nothing more
    }
    res.writeHead(200, { "content-length": 65_536 });
    let sent = 0;
    const next = () => {
      res.write(Buffer.alloc(4096));
      sent += 4096;
      if (sent < 65_536) setTimeout(next, 8); // 4096 B every 8 ms: 4 Mbit/s
      else res.end();
    };
    next();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  try {
    const r = await probeLink(`http://127.0.0.1:${port}/probe`);
    assert.equal(r.bytes, 65_536);
    assert.equal(r.bound, false);
    // timers run late on a busy machine, never early: at most 4 Mbit/s, and not far under it
    assert.ok(r.kbps > 1500 && r.kbps < 4600, JSON.stringify(r));
    const never = await probeLink(`http://127.0.0.1:${port}/never`, { timeoutMs: 300 });
    assert.deepEqual(never, { error: "the probe took over 300 ms", timedOut: true });
    const refused = await probeLink("http://127.0.0.1:1/probe");
    assert.match(refused.error, /^the probe failed: /);
    assert.equal(refused.timedOut, undefined);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
