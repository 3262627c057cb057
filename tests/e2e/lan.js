// A "LAN" address for the browser tests: a page at http://198.18.0.1:PORT/ is not a secure context (no
// WebCodecs, no AudioWorklet), as a page opened from another machine over plain HTTP is, yet nothing leaves
// this machine. 198.18.0.0/15 is the benchmarking range (RFC 2544), routed nowhere.
//
// lanAddress() makes a veth pair of this process (`mve<pid>h`, `mve<pid>p`) with 198.18.0.1/32 (or $LAN_ADDRESS:
// scripts/test.sh runs Chromium's and Firefox's files side by side, each at an address of its own) on the host side,
// once per process; it is removed by removeLan(), and at the latest when the process exits (also on SIGINT and
// SIGTERM). Pairs left by a run that was killed outright (their pid is gone) are removed first. It needs root
// (CAP_NET_ADMIN): without it, lanAddress() resolves to {skip: "why"} and the cases say so.

import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import net from "node:net";
import { processAlive as alive } from "./support.js";

/** This run's "LAN" address: $LAN_ADDRESS (another in 198.18.0.0/15, so that two runs side by side each have their
 * own), else 198.18.0.1. */
export const LAN_ADDRESS = process.env.LAN_ADDRESS || "198.18.0.1";
if (!/^198\.1[89]\.\d{1,3}\.\d{1,3}$/.test(LAN_ADDRESS)) throw new Error(`LAN_ADDRESS ${LAN_ADDRESS} is not in 198.18.0.0/15`);

const HOST = `mve${process.pid}h`;
const PEER = `mve${process.pid}p`;
let made = null; // a promise of {address} or {skip}
let exists = false;

function ip(args) {
  const run = spawnSync("ip", args, { encoding: "utf8", timeout: 10_000 });
  if (run.error) return { ok: false, why: `ip ${args.join(" ")}: ${run.error.message}` };
  return { ok: run.status === 0, why: `ip ${args.join(" ")}: ${(run.stderr || run.stdout).trim()}` };
}

/** Removes veth pairs of earlier runs whose process is gone. */
function removeStale() {
  const run = spawnSync("ip", ["-o", "link", "show"], { encoding: "utf8" });
  for (const m of (run.stdout ?? "").matchAll(/^\d+: (mve(\d+)h)[@:]/gm)) {
    if (Number(m[2]) !== process.pid && !alive(Number(m[2]))) ip(["link", "del", m[1]]);
  }
}

/** Resolves once a TCP connection to `address` works (the address is up and routed locally). */
function reachable(address) {
  return new Promise((resolve) => {
    const srv = net.createServer((s) => s.destroy());
    srv.on("error", (e) => resolve(`cannot listen on ${address}: ${e.message}`));
    srv.listen(0, address, () => {
      const c = net.connect(srv.address().port, address);
      c.on("connect", () => {
        c.destroy();
        srv.close(() => resolve(null));
      });
      c.on("error", (e) => srv.close(() => resolve(`cannot connect to ${address}: ${e.message}`)));
    });
  });
}

export function removeLan() {
  if (!exists) return;
  exists = false;
  made = null;
  ip(["link", "del", HOST]); // takes the peer with it
}

process.on("exit", removeLan);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    removeLan();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

async function make() {
  removeStale();
  const added = ip(["link", "add", HOST, "type", "veth", "peer", "name", PEER]);
  if (!added.ok) return { skip: `cannot make a veth pair for ${LAN_ADDRESS} (needs root): ${added.why}` };
  exists = true;
  // No IPv6 chatter (router solicitations) on the pair: it carries nothing but what the tests send.
  for (const dev of [HOST, PEER]) {
    try {
      writeFileSync(`/proc/sys/net/ipv6/conf/${dev}/disable_ipv6`, "1");
    } catch {}
  }
  for (const args of [["addr", "add", `${LAN_ADDRESS}/32`, "dev", HOST], ["link", "set", HOST, "up"], ["link", "set", PEER, "up"]]) {
    const r = ip(args);
    if (!r.ok) {
      removeLan();
      return { skip: `cannot set up ${LAN_ADDRESS}: ${r.why}` };
    }
  }
  const why = await reachable(LAN_ADDRESS);
  if (why) {
    removeLan();
    return { skip: why };
  }
  return { address: LAN_ADDRESS, device: HOST };
}

/** {address, device} once 198.18.0.1 is up on this run's veth pair, or {skip: reason}. */
export function lanAddress() {
  made ??= make();
  return made;
}
