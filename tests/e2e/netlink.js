// A real bottleneck for the browser tests: a network namespace per link, joined to this one by a veth pair
// in 198.19.0.0/16 (the benchmarking range, RFC 2544, routed nowhere), with tc's token bucket (tbf) on the
// egress of this side. What the server sends to a browser in the namespace waits in the bucket's queue, as it
// does in a phone's cellular link or a Wi-Fi router; the kernel's buffers on both ends are the real ones, and
// nothing in between reads the bytes. The browser runs inside the namespace (its executable wrapped in
// `ip netns exec`), so everything it reads crosses the link; a page on this side reaches the same server
// address through loopback, unthrottled.
//
// Link k: namespace `mvn<pid>n<k>`, this side `mvn<pid>h<k>` 198.19.k.1/24, the namespace's side
// `mvn<pid>p<k>` 198.19.k.2/24, its default route through 198.19.k.1. Addresses of this side are local to the
// machine, so a browser behind link 2 reaches a server listening on 198.19.1.1 too (through its own link).
// Links are removed by remove(), and at the latest when the process exits; those of a run killed outright
// (their pid is gone) are removed first. Needs root (CAP_NET_ADMIN): without it, makeLink() resolves to
// {skip: "why"}.

import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { processAlive as alive, scratch } from "./support.js";

const PREFIX = `mvn${process.pid}`;
const made = new Set(); // link numbers of this process

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 10_000 });
  if (r.error) return { ok: false, why: `${cmd} ${args.join(" ")}: ${r.error.message}` };
  return { ok: r.status === 0, why: `${cmd} ${args.join(" ")}: ${(r.stderr || r.stdout).trim()}` };
}

/** Removes the links and namespaces of earlier runs whose process is gone. */
function removeStale() {
  const links = spawnSync("ip", ["-o", "link", "show"], { encoding: "utf8" }).stdout ?? "";
  for (const m of links.matchAll(/^\d+: (mvn(\d+)h\d+)[@:]/gm)) {
    if (!alive(Number(m[2]))) run("ip", ["link", "del", m[1]]);
  }
  const spaces = spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout ?? "";
  for (const m of spaces.matchAll(/^(mvn(\d+)n\d+)/gm)) {
    if (!alive(Number(m[2]))) run("ip", ["netns", "del", m[1]]);
  }
}

function removeLink(k) {
  if (!made.delete(k)) return;
  run("ip", ["link", "del", `${PREFIX}h${k}`]); // takes the peer with it
  run("ip", ["netns", "del", `${PREFIX}n${k}`]);
}

process.on("exit", () => {
  for (const k of [...made]) removeLink(k);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const k of [...made]) removeLink(k);
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

/**
 * What the bottleneck holds: `rateKbit` through a token bucket of `burstBytes`, with a queue of `limitBytes`
 * (or of `latencyMs` at that rate). tc's own words for them.
 */
function tbfArgs({ rateKbit, burstBytes = 16 * 1024, limitBytes, latencyMs }) {
  const queue = limitBytes !== undefined ? ["limit", `${limitBytes}b`] : ["latency", `${latencyMs}ms`];
  return ["tbf", "rate", `${rateKbit}kbit`, "burst", `${burstBytes}b`, ...queue];
}

/**
 * Link `k` (1..254): {address (this side's), peerAddress, namespace, device, wrap(executable), throttle(shape),
 * free(), remove()}, or {skip: why}.
 */
export async function makeLink(k) {
  if (made.size === 0) removeStale();
  const ns = `${PREFIX}n${k}`;
  const host = `${PREFIX}h${k}`;
  const peer = `${PREFIX}p${k}`;
  const address = `198.19.${k}.1`;
  const peerAddress = `198.19.${k}.2`;
  const first = run("ip", ["netns", "add", ns]);
  if (!first.ok) return { skip: `cannot make a network namespace (needs root): ${first.why}` };
  made.add(k);
  const steps = [
    ["ip", ["link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns]],
    ["ip", ["addr", "add", `${address}/24`, "dev", host]],
    ["ip", ["link", "set", host, "up"]],
    ["ip", ["-n", ns, "link", "set", "lo", "up"]],
    ["ip", ["-n", ns, "addr", "add", `${peerAddress}/24`, "dev", peer]],
    ["ip", ["-n", ns, "link", "set", peer, "up"]],
    ["ip", ["-n", ns, "route", "add", "default", "via", address]],
  ];
  for (const [cmd, args] of steps) {
    const r = run(cmd, args);
    if (!r.ok) {
      removeLink(k);
      return { skip: `cannot set up link ${k}: ${r.why}` };
    }
  }
  // No IPv6 chatter on the pair: it carries nothing but what the tests send.
  for (const [where, dev] of [[[], host], [["-n", ns], peer]]) {
    run("ip", [...where, "link", "set", dev, "addrgenmode", "none"]);
  }
  const probe = run("tc", ["qdisc", "replace", "dev", host, "root", ...tbfArgs({ rateKbit: 100000, limitBytes: 1 << 20 })]);
  if (!probe.ok) {
    removeLink(k);
    return { skip: `cannot shape link ${k} (tc tbf): ${probe.why}` };
  }
  run("tc", ["qdisc", "del", "dev", host, "root"]);
  return {
    address,
    peerAddress,
    namespace: ns,
    device: host,
    /** An executable that runs `executable` inside the namespace, with the same arguments. */
    wrap(executable) {
      const file = path.join(scratch(), `in-${ns}-${path.basename(executable)}`);
      writeFileSync(file, `#!/bin/sh\nexec ip netns exec ${ns} ${JSON.stringify(executable)} "$@"\n`);
      chmodSync(file, 0o755);
      return file;
    },
    /** From now on the server's bytes to the namespace go through this bottleneck (tbfArgs). */
    throttle(shape) {
      const r = run("tc", ["qdisc", "replace", "dev", host, "root", ...tbfArgs(shape)]);
      if (!r.ok) throw new Error(r.why);
    },
    /** The link unthrottled again (what is queued goes at once). */
    free() {
      run("tc", ["qdisc", "del", "dev", host, "root"]);
    },
    remove() {
      removeLink(k);
    },
  };
}
