// The page around the players: builds one card per Player, reads the URL options, and exposes everything
// on window.mqttVideo for scripts and tests:
//
//   window.mqttVideo.players[0].stats()   // {state, currentTime, latencyMs, decodedFrames, ...}
//   window.mqttVideo.addPlayer({ url: "builtin://testsrc", autoplay: true })
//
// URL options: ?url=SOURCE&autoplay=1&muted=1&broker=ws://host:port/mqtt&target=MS&players=N&prefix=video
//              &renderer=auto|webcodecs|mse&protocol=1|2&rendition=auto|NAME&output=auto|generator|canvas|captured
// The broker login comes from the login form (kept in memory, in localStorage with "remember me"), never the URL.

import { keepLogin, rememberedLogin } from "./credentials.js";
import { fetchTlsInfo, secureOffer } from "./page-urls.js";
import { defaultBrokerUrl, Player, RENDERERS, VIDEO_OUTPUTS } from "./player.js";

const params = new URLSearchParams(location.search);
const flag = (name) => ["1", "true", "yes", "on"].includes((params.get(name) ?? "").toLowerCase());
const number = (name) => {
  const v = params.get(name);
  return v === null || v === "" || !Number.isFinite(Number(v)) ? undefined : Number(v);
};

// The broker login: from the login form (or a remembered one), never from the URL.
const storage = (() => {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled
  }
})();
const remembered = rememberedLogin(storage);

const pageOptions = {
  username: remembered?.username ?? "",
  password: remembered?.password ?? "",
  broker: params.get("broker") || defaultBrokerUrl(),
  prefix: params.get("prefix") || undefined,
  targetLatency: number("target") === undefined ? undefined : number("target") / 1000,
  muted: flag("muted"),
  renderer: RENDERERS.includes(params.get("renderer")) ? params.get("renderer") : undefined,
  protocol: [1, 2].includes(number("protocol")) ? number("protocol") : undefined,
  // `auto` (the default) or the name of one of the stream's renditions (ignored for a stream without any)
  rendition: params.get("rendition") || undefined,
  // how WebCodecs frames reach the screen (Player's videoOutput)
  videoOutput: VIDEO_OUTPUTS.includes(params.get("output")) ? params.get("output") : undefined,
};

const registry = {
  /** Every Player on the page, in the order they were added. */
  players: [],
  Player,
  addPlayer,
  /** The last source list received (`<prefix>/sources`), or null. */
  sources: null,
};
window.mqttVideo = registry;

const list = document.getElementById("players");
const template = document.getElementById("player-template");
document.getElementById("broker-url").textContent = pageOptions.broker;
document.getElementById("add-player").addEventListener("click", () => addPlayer({}));

const loginForm = document.getElementById("login");
const loginState = document.getElementById("login-state");
document.getElementById("login-user").value = pageOptions.username;
document.getElementById("login-password").value = pageOptions.password;
document.getElementById("login-remember").checked = remembered !== null;
loginForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const login = {
    username: document.getElementById("login-user").value.trim(),
    password: document.getElementById("login-password").value,
  };
  keepLogin(storage, login, document.getElementById("login-remember").checked);
  pageOptions.username = login.username;
  pageOptions.password = login.password;
  for (const p of registry.players) p.login(login);
  showLogin();
});

/** The login pill: refused (the broker's word), logged in as, or anonymous. */
function showLogin() {
  const refused = registry.players.map((p) => p.loginRefused).find(Boolean);
  loginState.dataset.ok = String(!refused);
  text(loginState, refused ? refused.message : pageOptions.username ? `logged in as ${pageOptions.username}` : "anonymous");
}

function text(el, value) {
  if (el.textContent !== value) el.textContent = value;
}

function fmt(x, unit, digits = 0) {
  return x === null || x === undefined ? "–" : `${x.toFixed(digits)} ${unit}`;
}

function shortCodec(mime) {
  const m = /codecs="([^"]*)"/.exec(mime ?? "");
  return m ? m[1] : (mime ?? "–");
}

/** The stats panel's rendition: the one playing, how it was chosen, the switches (and one in progress). */
function renditionText(s) {
  if (!s.rendition) return "–";
  const mode = s.renditionMode === "auto" ? "auto" : "fixed";
  const switches = `${s.renditionSwitches} switch${s.renditionSwitches === 1 ? "" : "es"}`;
  const failed = s.renditionSwitchFailures ? `, ${s.renditionSwitchFailures} given up` : "";
  const pending = s.renditionSwitching ? `, → ${s.renditionSwitching}` : "";
  const link = s.linkKbps ? `, link ~${s.linkKbps >= 10000 ? `${(s.linkKbps / 1000).toFixed(0)} Mbit/s` : `${s.linkKbps} kbit/s`}` : "";
  return `${s.rendition} (${mode}, ${switches}${failed}${pending}${link})`;
}

function updateServerPill(sources) {
  const pill = document.getElementById("server-state");
  if (sources === null) return;
  registry.sources = sources;
  pill.dataset.ok = String(sources.length > 0);
  text(pill, sources.length ? `server up, ${sources.length} source${sources.length > 1 ? "s" : ""}` : "no server");
}

/**
 * Adds a player card. Options: url, autoplay, muted, broker, prefix, targetLatency (s), renderer and any Player
 * option.
 * Returns the Player.
 */
function addPlayer(options = {}) {
  const card = template.content.firstElementChild.cloneNode(true);
  const video = card.querySelector("video");
  const form = card.querySelector(".controls");
  const select = card.querySelector(".source");
  const input = card.querySelector(".url");
  const overlay = card.querySelector(".overlay");
  const muteButton = card.querySelector(".mute");
  const stat = Object.fromEntries([...card.querySelectorAll("[data-stat]")].map((el) => [el.dataset.stat, el]));
  list.append(card);

  const { url, autoplay, ...playerOptions } = { ...pageOptions, ...options };
  video.muted = !!playerOptions.muted;
  const player = new Player(video, playerOptions);
  player.card = card;
  registry.players.push(player);
  if (url) input.value = url;

  const showMute = () => text(muteButton, video.muted ? "Unmute" : "Mute");
  showMute();
  video.addEventListener("volumechange", showMute);
  muteButton.addEventListener("click", () => {
    video.muted = !video.muted;
    if (!video.muted) video.play().catch(() => {});
  });
  const pip = card.querySelector(".pip");
  pip.hidden = !document.pictureInPictureEnabled;
  pip.addEventListener("click", () => player.pictureInPicture());
  const fullscreen = card.querySelector(".fullscreen");
  const screenBox = card.querySelector(".screen");
  // iPhone Safari has no element full screen, only the <video>'s own (which shows no WebCodecs canvas).
  fullscreen.hidden = !document.fullscreenEnabled && typeof video.webkitEnterFullscreen !== "function";
  fullscreen.addEventListener("click", () => {
    const fail = (e) => console.warn(`full screen: ${e.name}: ${e.message}`);
    if (document.fullscreenElement) document.exitFullscreen().catch(fail);
    else if (document.fullscreenEnabled && screenBox.requestFullscreen) screenBox.requestFullscreen().catch(fail);
    else video.webkitEnterFullscreen?.();
  });
  card.querySelector(".remove").addEventListener("click", () => {
    player.destroy();
    clearInterval(timer);
    registry.players.splice(registry.players.indexOf(player), 1);
    card.remove();
  });
  card.querySelector(".stop").addEventListener("click", () => player.stop());
  select.addEventListener("change", () => {
    if (!select.value) return;
    input.value = select.value;
    player.play(select.value);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    // A click is a user gesture: playing with sound is allowed now.
    if (!options.muted && !flag("muted")) video.muted = false;
    player.play(input.value);
  });

  player.addEventListener("sources", () => {
    updateServerPill(player.sources);
    const current = select.value;
    select.replaceChildren(new Option(player.sources.length ? "Sources…" : "No sources (no server?)", ""));
    for (const s of player.sources) {
      const option = new Option(s.name ?? s.url, s.url);
      if (s.description) option.title = s.description;
      select.append(option);
    }
    select.value = [...select.options].some((o) => o.value === current) ? current : "";
  });

  const render = () => {
    const s = player.stats();
    card.dataset.state = s.state;
    if (s.url && select.value !== s.url && [...select.options].some((o) => o.value === s.url)) select.value = s.url;
    text(card.querySelector(".state"), s.state);
    text(card.querySelector(".message"), s.state === "playing" ? s.url ?? "" : s.message ?? "");
    const overlayText =
      s.state === "error" ? s.message :
      s.state === "reconnecting" ? "Reconnecting…" :
      s.state === "connecting" || s.state === "buffering" ? "Loading…" : "";
    overlay.hidden = !overlayText;
    text(overlay, overlayText);
    text(stat.latency, fmt(s.latencyMs, "ms"));
    text(stat.latencyPct, s.latencyP50Ms === null ? "–" : `${s.latencyP50Ms.toFixed(0)} / ${s.latencyP95Ms.toFixed(0)} ms`);
    text(stat.resolution, s.width ? `${s.width}×${s.height}` : "–");
    text(stat.codec, shortCodec(s.mimeCodec));
    stat.codec.title = s.mimeCodec ?? "";
    text(stat.bitrate, s.bitrateKbps ? fmt(s.bitrateKbps, "kbit/s") : "–");
    text(stat.buffer, s.state === "playing" || s.state === "buffering" ? fmt(s.bufferSeconds * 1000, "ms") : "–");
    text(stat.frames, `${s.decodedFrames} decoded, ${s.droppedFrames} dropped`);
    text(stat.firstFrame, fmt(s.firstFrameMs, "ms"));
    text(stat.target, fmt(s.targetLatencyMs, "ms"));
    text(stat.rate, s.state === "playing" ? `${s.playbackRate.toFixed(3)}×` : "–");
    text(stat.received, s.receivedBytes ? `${(s.receivedBytes / 1e6).toFixed(1)} MB` : "–");
    text(stat.resets, `${s.stalls} / ${s.jumps} / ${s.resets}`);
    text(stat.renderer, s.renderer === "webcodecs" ? `WebCodecs (${s.videoOutput ?? "no output"})` : s.webCodecsOff ? `MediaSource (WebCodecs off: ${s.webCodecsOff})` : "MediaSource");
    stat.renderer.title = s.webCodecsOff ? `WebCodecs is off: ${s.webCodecsOff}` : "";
    text(stat.delivery, s.protocol === 2 ? `stream topic, ${s.skippedFragments} skipped` : "reply topic");
    text(stat.rendition, renditionText(s));
    stat.rendition.title = s.abrReason ?? "";
    text(stat.avOffset, s.avOffsetP50Ms === null ? "–" : `${s.avOffsetP50Ms.toFixed(0)} ms (p5 ${s.avOffsetP5Ms.toFixed(0)}, p95 ${s.avOffsetP95Ms.toFixed(0)})`);
  };
  player.addEventListener("state", render);
  player.addEventListener("connection", showLogin);
  const timer = setInterval(render, 250);
  render();

  if (url && autoplay) player.play(url);
  return player;
}

/**
 * On a page that is not a secure context (plain HTTP but on localhost), offers the same page over HTTPS when
 * the gateway says it serves it (tls.json beside the page); a server that does not say offers nothing.
 */
async function offerSecurePage() {
  if (globalThis.isSecureContext || location.protocol !== "http:") return;
  const offer = secureOffer(location, globalThis.isSecureContext, await fetchTlsInfo(location));
  if (!offer) return;
  document.getElementById("secure-link").href = offer.href;
  const fingerprint = document.getElementById("secure-fingerprint");
  fingerprint.hidden = !offer.fingerprint;
  fingerprint.querySelector("code").textContent = offer.fingerprint ?? "";
  document.getElementById("secure-notice").hidden = false;
}
offerSecurePage();

const count = Math.max(1, Math.min(16, number("players") ?? 1));
for (let i = 0; i < count; i++) addPlayer({ url: params.get("url") ?? undefined, autoplay: flag("autoplay") });
showLogin();

// Leaving the page: stop cleanly (the MQTT last will covers a crash or a lost connection).
addEventListener("pagehide", () => {
  for (const p of registry.players) p.destroy();
});
