#!/usr/bin/env bash
# The main job, on a fresh machine: installs what is missing, builds, starts a mosquitto broker (or uses the
# one already listening on the port) and `mqtt-video serve` with its gateway, and prints the page to open.
# The built-in test pattern plays at once; Ctrl-C stops everything.
#   MQTT_PORT (default 1883) and HTTP (default 127.0.0.1:8080) change where they listen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The page's MQTT.js from npm with its lock file; the build embeds the page and the bundle in the binary.
(cd client && npm ci --silent --no-audit --no-fund)
cargo build --release --quiet

mqtt_port="${MQTT_PORT:-1883}"
http="${HTTP:-127.0.0.1:8080}"
run_dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$run_dir"; }
trap cleanup EXIT INT TERM

if (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; then
  echo "demo: using the MQTT broker already listening on 127.0.0.1:$mqtt_port"
else
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$mqtt_port" > "$run_dir/mosquitto.conf"
  mosquitto -c "$run_dir/mosquitto.conf" & pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.1; done
fi

cat > "$run_dir/demo.toml" <<TOML
[broker]
port = $mqtt_port
client_id = "mqtt-video-demo"

[gateway]
listen = "$http"
TOML
MQTT_VIDEO_LOG="${MQTT_VIDEO_LOG:-info}" ./target/release/mqtt-video serve --config "$run_dir/demo.toml" & pids+=($!)

echo
echo "  Open http://$http/?url=builtin://testsrc&autoplay=1&muted=1"
echo "  (or http://$http/ to pick a source; Ctrl-C stops the demo)"
echo
wait "${pids[-1]}"
