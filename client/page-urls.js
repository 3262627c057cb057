// The URLs the page derives from its own location, pure over a Location-like object ({href, protocol,
// hostname, port, pathname, search, hash}); tested in tests/e2e/page-urls.test.js.
//
// Everything is relative to the page, never to the origin's root: behind a reverse proxy that serves the
// gateway at https://home.example/cameras/, the MQTT WebSocket is wss://home.example/cameras/mqtt and the
// TLS facts are https://home.example/cameras/tls.json.
//
// The gateway can serve HTTPS and plain HTTP on the same port (docs/CONFIG.md). Plain HTTP on anything but
// localhost is not a secure context, which has no WebCodecs; `tls.json` beside the page says whether the
// gateway serves HTTPS ({"https": true, "port": 8080, "fingerprint": "AB:CD:..."} or {"https": false}), so
// the page can offer its secure twin.

/** The MQTT WebSocket beside the page at `loc`: `mqtt` in the page's folder, wss: on an https: page, else ws:. */
export function brokerUrl(loc) {
  const url = new URL("mqtt", loc.href);
  url.protocol = loc.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** `tls.json` beside the page at `loc` (the gateway's TLS facts). */
export function tlsInfoUrl(loc) {
  return new URL("tls.json", loc.href).href;
}

const FINGERPRINT = /^[0-9A-F]{2}(:[0-9A-F]{2})+$/i;

/** The gateway's offer of HTTPS in a `tls.json` body: {port, fingerprint (null if absent or malformed)}, or null. */
export function tlsOffer(json) {
  if (!json || typeof json !== "object" || json.https !== true) return null;
  const port = json.port;
  if (!Number.isInteger(port) || port < 1 || port > 65535) return null;
  const fingerprint = typeof json.fingerprint === "string" && FINGERPRINT.test(json.fingerprint) ? json.fingerprint.toUpperCase() : null;
  return { port, fingerprint };
}

/**
 * The same page over https on `port`: https://<hostname>:<port><pathname><search><hash> (no :443; an IPv6
 * address in brackets), or null for a page without a host name (file:).
 */
export function securePageUrl(loc, port) {
  let host = loc.hostname ?? "";
  if (!host) return null;
  // Location.hostname keeps an IPv6 address's brackets, but a hand-made location may not.
  if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
  const suffix = port === 443 ? "" : `:${port}`;
  return `https://${host}${suffix}${loc.pathname ?? "/"}${loc.search ?? ""}${loc.hash ?? ""}`;
}

/**
 * What to offer a page at `loc` (secure: whether it is a secure context): {href, fingerprint} when it is not
 * secure and the gateway serves HTTPS (`tls.json`'s body `json`), else null.
 */
export function secureOffer(loc, secure, json) {
  if (secure || loc.protocol !== "http:") return null;
  const offer = tlsOffer(json);
  const href = offer && securePageUrl(loc, offer.port);
  return href ? { href, fingerprint: offer.fingerprint } : null;
}

/**
 * Asks the gateway beside the page at `loc` for its TLS facts (resolves to the parsed `tls.json`, or null for
 * a 404, a network error or anything but JSON: a customised server or a proxy, of which nothing is known).
 */
export async function fetchTlsInfo(loc, fetchFn = globalThis.fetch) {
  try {
    const response = await fetchFn(tlsInfoUrl(loc), { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) return null;
    return await response.json();
  } catch {
    return null;
  }
}
