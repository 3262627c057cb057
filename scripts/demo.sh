#!/usr/bin/env bash
# The main job, on a fresh machine: installs what is missing, builds, starts `mqtt-video serve` with its
# gateway and its embedded broker (or with the broker already listening on the port), and prints the page to
# open.
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
  broker="port = $mqtt_port"
else
  # No broker to install: the server runs one inside (no logins, no ACL; docker/ has mosquitto for those).
  broker="embedded = true
embedded_listen = \"127.0.0.1:$mqtt_port\""
fi

cat > "$run_dir/demo.toml" <<TOML
[broker]
$broker
client_id = "mqtt-video-demo"

[gateway]
listen = "$http"

[gateway.tls]
# HTTPS beside HTTP on the same port, with a certificate the server makes and keeps (~/.local/state/mqtt-video).
enabled = true
TOML
MQTT_VIDEO_LOG="${MQTT_VIDEO_LOG:-info}" ./target/release/mqtt-video serve --config "$run_dir/demo.toml" \
  2> >(tee "$run_dir/serve.log" >&2) & pids+=($!)
for _ in $(seq 100); do grep -q "the page is at" "$run_dir/serve.log" 2>/dev/null && break; sleep 0.1; done
fingerprint="$(grep -m1 -o 'fingerprint=[0-9A-F:]*' "$run_dir/serve.log" | cut -d= -f2)"

host="${http%:*}" port="${http##*:}"
here="$http"
if [ "$host" = "0.0.0.0" ] || [ "$host" = "::" ]; then here="127.0.0.1:$port"; fi
echo
echo "  Open http://$here/?url=builtin://testsrc&autoplay=1&muted=1"
echo "  (or http://$here/ to pick a source; Ctrl-C stops the demo)"
if [ "$host" = "0.0.0.0" ] || [ "$host" = "::" ]; then
  echo "  From another machine: https://$(hostname):$port/?url=builtin://testsrc&autoplay=1&muted=1"
  echo "  (http:// is redirected there; accept the certificate once: SHA-256 $fingerprint)"
else
  echo "  For other machines: HTTP=0.0.0.0:8080 bash scripts/demo.sh, then https://$(hostname):8080/"
fi
echo
wait "${pids[-1]}"
