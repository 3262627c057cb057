// Table tests of the URLs the page derives from its own location (client/page-urls.js): the MQTT WebSocket
// beside the page (behind a reverse proxy's path prefix too), tls.json, and the secure twin of a page opened
// over plain HTTP.

import { test } from "node:test";
import assert from "node:assert/strict";
import { brokerUrl, fetchTlsInfo, secureOffer, securePageUrl, tlsInfoUrl, tlsOffer } from "../../client/page-urls.js";

/** A Location-like object for `href`, as the browser's: URL has the same fields. */
const at = (href) => new URL(href);

test("the MQTT WebSocket is `mqtt` in the page's folder, wss: on https:", () => {
  // [page, broker]
  const rows = [
    ["http://127.0.0.1:8080/", "ws://127.0.0.1:8080/mqtt"],
    ["http://127.0.0.1:8080/?url=builtin://testsrc&autoplay=1", "ws://127.0.0.1:8080/mqtt"],
    ["http://127.0.0.1:8080/index.html#x", "ws://127.0.0.1:8080/mqtt"],
    ["https://home.example/cameras/", "wss://home.example/cameras/mqtt"],
    ["https://home.example/cameras/index.html", "wss://home.example/cameras/mqtt"],
    ["https://home.example/cameras/index.html?players=2", "wss://home.example/cameras/mqtt"],
    ["https://home.example:8443/a/b/", "wss://home.example:8443/a/b/mqtt"],
    ["http://nas.lan:8080/", "ws://nas.lan:8080/mqtt"],
    ["http://[fd00::5]:8080/cam/", "ws://[fd00::5]:8080/cam/mqtt"],
    ["https://home.example:443/", "wss://home.example/mqtt"],
  ];
  for (const [page, broker] of rows) assert.equal(brokerUrl(at(page)), broker, page);
});

test("tls.json is beside the page", () => {
  assert.equal(tlsInfoUrl(at("http://nas.lan:8080/")), "http://nas.lan:8080/tls.json");
  assert.equal(tlsInfoUrl(at("http://nas.lan/cameras/index.html?url=x")), "http://nas.lan/cameras/tls.json");
});

test("the secure page: the same path, query and fragment over https on the gateway's port", () => {
  // [page, port, secure page]
  const rows = [
    ["http://nas.lan:8080/", 8080, "https://nas.lan:8080/"],
    ["http://nas.lan:8080/?url=builtin://testsrc&autoplay=1#top", 8080, "https://nas.lan:8080/?url=builtin://testsrc&autoplay=1#top"],
    ["http://198.18.0.1:8080/cameras/index.html", 8443, "https://198.18.0.1:8443/cameras/index.html"],
    ["http://nas.lan/", 443, "https://nas.lan/"],
    ["http://[fd00::5]:8080/", 8080, "https://[fd00::5]:8080/"],
    ["http://[::1]:8080/?players=2", 8080, "https://[::1]:8080/?players=2"],
  ];
  for (const [page, port, secure] of rows) assert.equal(securePageUrl(at(page), port), secure, page);
  // A hand-made location may give an IPv6 host name without its brackets.
  const bare = { protocol: "http:", hostname: "fd00::5", pathname: "/cam/", search: "", hash: "" };
  assert.equal(securePageUrl(bare, 8080), "https://[fd00::5]:8080/cam/");
  assert.equal(securePageUrl({ hostname: "", pathname: "/x.html" }, 8080), null);
});

test("what tls.json offers", () => {
  const fp = "ab:cd:ef:01";
  // [body, offer]
  const rows = [
    [{ https: true, port: 8080, fingerprint: fp }, { port: 8080, fingerprint: "AB:CD:EF:01" }],
    [{ https: true, port: 8080 }, { port: 8080, fingerprint: null }],
    [{ https: true, port: 8080, fingerprint: "not hex" }, { port: 8080, fingerprint: null }],
    [{ https: false }, null],
    [{ https: "yes", port: 8080 }, null],
    [{ https: true }, null],
    [{ https: true, port: "8080" }, null],
    [{ https: true, port: 0 }, null],
    [{ https: true, port: 70000 }, null],
    [null, null],
    ["https", null],
  ];
  for (const [body, offer] of rows) assert.deepEqual(tlsOffer(body), offer, JSON.stringify(body));
});

test("a secure page is offered only to a plain-HTTP page whose gateway serves HTTPS", () => {
  const tls = { https: true, port: 8080, fingerprint: "AB:CD" };
  // [page, secure context, tls.json, offer]
  const rows = [
    ["http://nas.lan:8080/", false, tls, { href: "https://nas.lan:8080/", fingerprint: "AB:CD" }],
    ["http://nas.lan:8080/", false, { https: false }, null],
    ["http://nas.lan:8080/", false, null, null], // 404 or network error: nothing is known
    ["http://localhost:8080/", true, tls, null], // localhost is a secure context already
    ["https://nas.lan:8080/", true, tls, null],
  ];
  for (const [page, secure, json, offer] of rows) assert.deepEqual(secureOffer(at(page), secure, json), offer, page);
});

test("fetching tls.json: a 404, a network error or a body that is not JSON tell nothing", async () => {
  const loc = at("http://nas.lan/cameras/?url=x");
  const asked = [];
  const reply = (status, body) => async (url) => {
    asked.push(url);
    return { ok: status >= 200 && status < 300, status, json: async () => JSON.parse(body) };
  };
  assert.deepEqual(await fetchTlsInfo(loc, reply(200, '{"https": true, "port": 8080}')), { https: true, port: 8080 });
  assert.equal(asked[0], "http://nas.lan/cameras/tls.json");
  assert.equal(await fetchTlsInfo(loc, reply(404, "not found")), null);
  assert.equal(await fetchTlsInfo(loc, reply(200, "<html>")), null);
  assert.equal(await fetchTlsInfo(loc, async () => { throw new TypeError("Failed to fetch"); }), null);
});
