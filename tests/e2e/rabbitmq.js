// A real RabbitMQ node (Debian's rabbitmq-server, its MQTT plugin) for the browser tests, as
// tests/it/support/rabbitmq.rs starts one for the Rust tests: its own node name, ports, data and config in the
// scratch folder, run as the test's user (not the packaged service). With `definitions`, it loads them at boot
// (users, permissions, topic permissions) and takes no anonymous clients.

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { freePort, scratch, startProcess, waitPort } from "./support.js";

const BIN = "/usr/lib/rabbitmq/bin";

/** A RabbitMQ node with the MQTT plugin on 127.0.0.1:`port`. */
export class RabbitMQ {
  constructor({ port, definitions = null }) {
    this.port = port;
    this.definitions = definitions;
    this.name = `mvtest${process.pid}x${port}@localhost`;
    this.dir = path.join(scratch(), this.name);
    this.proc = null;
  }

  /** Starts the node and waits (up to 60 s) until its MQTT listener takes connections. */
  async start() {
    if (!existsSync(`${BIN}/rabbitmq-server`)) {
      throw new Error("RabbitMQ is not installed: apt-get install rabbitmq-server (scripts/setup.sh does)");
    }
    mkdirSync(this.dir, { recursive: true });
    const amqpPort = await freePort();
    const conf = [`listeners.tcp.default = ${amqpPort}`, `mqtt.listeners.tcp.default = ${this.port}`, "loopback_users = none"];
    if (this.definitions) {
      const file = path.join(this.dir, "definitions.json");
      writeFileSync(file, JSON.stringify(this.definitions));
      conf.push("mqtt.allow_anonymous = false", "definitions.import_backend = local_filesystem", `definitions.local.path = ${file}`);
    } else {
      conf.push("mqtt.allow_anonymous = true");
    }
    writeFileSync(path.join(this.dir, "rabbitmq.conf"), `${conf.join("\n")}\n`);
    writeFileSync(path.join(this.dir, "enabled_plugins"), "[rabbitmq_mqtt].\n");
    const at = (f) => path.join(this.dir, f);
    const env = {
      ...process.env,
      RABBITMQ_NODENAME: this.name,
      RABBITMQ_NODE_PORT: String(amqpPort),
      RABBITMQ_DIST_PORT: String(await freePort()),
      RABBITMQ_MNESIA_BASE: at("mnesia"),
      RABBITMQ_LOG_BASE: at("log"),
      RABBITMQ_CONFIG_FILE: at("rabbitmq.conf"),
      RABBITMQ_ENABLED_PLUGINS_FILE: at("enabled_plugins"),
      RABBITMQ_FEATURE_FLAGS_FILE: at("feature_flags"),
      RABBITMQ_PLUGINS_EXPAND_DIR: at("plugins-expand"),
    };
    this.proc = startProcess("rabbitmq", `${BIN}/rabbitmq-server`, [], { env });
    await waitPort(this.port, 60_000).catch((e) => {
      throw new Error(`${e.message}\n${this.proc.log()}`);
    });
  }

  /** Stops the node (rabbitmqctl stop, then the process). */
  async stop() {
    spawnSync(`${BIN}/rabbitmqctl`, ["-n", this.name, "stop"], { stdio: "ignore", timeout: 30_000 });
    await this.proc?.kill();
  }
}

/**
 * docker/rights/rabbitmq.json with `users` ([name, password] pairs) added, as an administrator who created
 * them (rabbitmqctl add_user) then imported the file would have them.
 */
export function rightsDefinitions(rights, users) {
  return { ...rights, users: users.map(([name, password]) => ({ name, password, tags: [] })) };
}
