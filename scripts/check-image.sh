#!/usr/bin/env bash
# Checks the docker image's final stage without a Docker engine: a Debian 12 (bookworm) chroot made by
# debootstrap runs that stage's own RUN line (every runtime package installs, the mqtt-video user is made),
# gets the binary and docker/mqtt-video.toml where the Dockerfile copies them, and then, as uid 10001:
# the binary finds all its libraries, serves (with a mosquitto on this machine's loopback), `healthcheck
# --config` passes, the page is served, and a describe of the built-in pattern is answered.
#   bash scripts/check-image.sh [BINARY]      (default target/release/mqtt-video; root; ~3 min the first time)
# CHROOT=DIR keeps the chroot there (reused by later runs); by default a temporary one is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/mqtt-video}"
[ -x "$bin" ] || { echo "check-image: $bin is missing: cargo build --release" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "check-image: debootstrap and chroot need root" >&2; exit 1; }
missing=()
for tool in debootstrap mosquitto mosquitto_sub curl python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap mosquitto mosquitto-clients curl >/dev/null
fi

root="${CHROOT:-$(mktemp -d)}"
# mktemp makes its folder 0700: as the chroot's / that would keep uid 10001 from running anything in it.
chmod 0755 "$root"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  umount "$root/proc" 2>/dev/null || true
  [ -n "${CHROOT:-}" ] || rm -rf "$root"
}
trap cleanup EXIT
step() { echo "check-image: $*"; }

if [ ! -x "$root/usr/bin/apt-get" ]; then
  step "debootstrap bookworm into $root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"

# The final stage's RUN line, exactly as the Dockerfile has it (continuations joined).
run_line="$(awk '/^FROM debian:bookworm-slim/{final=1; next} final && /^RUN /{sub(/^RUN /,""); cmd=$0; while (cmd ~ /\\$/) {sub(/\\$/,"",cmd); getline nxt; cmd=cmd nxt} print cmd; exit}' docker/Dockerfile)"
[ -n "$run_line" ] || { echo "check-image: no RUN line in the final stage of docker/Dockerfile" >&2; exit 1; }
if ! chroot "$root" id mqtt-video >/dev/null 2>&1; then
  step "the final stage's RUN: $run_line"
  chroot "$root" /bin/sh -c "$run_line" >/dev/null
fi
install -D -m 0755 "$bin" "$root/usr/local/bin/mqtt-video"
install -D -m 0644 docker/mqtt-video.toml "$root/etc/mqtt-video/config.toml"
user="$(chroot "$root" id -u mqtt-video):$(chroot "$root" id -g mqtt-video)"
step "user: $(chroot "$root" id mqtt-video)"

missing_libs="$(chroot "$root" ldd /usr/local/bin/mqtt-video | grep 'not found' || true)"
[ -z "$missing_libs" ] || { echo "check-image: libraries missing: $missing_libs" >&2; exit 1; }
step "ldd: $(chroot "$root" ldd /usr/local/bin/mqtt-video | wc -l) libraries, none missing"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port="$(free_port)"; http_port="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$mqtt_port" > "$root/tmp/mosquitto.conf"
mosquitto -c "$root/tmp/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)

# As the image's USER: uid 10001 and its group.
as_user=(chroot --userspec="$user" "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin
  MQTT_VIDEO_BROKER_HOST=127.0.0.1 MQTT_VIDEO_BROKER_PORT="$mqtt_port" MQTT_VIDEO_BROKER_PASSWORD=unused
  MQTT_VIDEO_GATEWAY_LISTEN="127.0.0.1:$http_port" MQTT_VIDEO_LOG=info STATE_DIRECTORY=/var/lib/mqtt-video)
"${as_user[@]}" mqtt-video serve --config /etc/mqtt-video/config.toml > "$root/tmp/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  "${as_user[@]}" mqtt-video healthcheck --config /etc/mqtt-video/config.toml >/dev/null 2>&1 && break
  sleep 0.1
done
step "healthcheck: $("${as_user[@]}" mqtt-video healthcheck --config /etc/mqtt-video/config.toml)"

page="$(curl -fsS "http://127.0.0.1:$http_port/")"
grep -q '<script type="module" src="app.js">' <<<"$page" || { echo "check-image: no page at /" >&2; exit 1; }
bundle_bytes="$(curl -fsS "http://127.0.0.1:$http_port/node_modules/mqtt/dist/mqtt.esm.js" | wc -c)"
step "page: index.html and the MQTT.js bundle ($bundle_bytes bytes) from the binary"

# HTTPS on the same port, with the certificate the server made and kept in the image's state volume.
# Read whole before matching: `curl | grep -q` fails under pipefail when grep stops reading first (curl: 23).
page="$(curl -fsSk "https://127.0.0.1:$http_port/")"
grep -q '<script type="module" src="app.js">' <<<"$page" || { echo "check-image: no page over https" >&2; exit 1; }
[ -s "$root/var/lib/mqtt-video/gateway-cert.pem" ] || { echo "check-image: no certificate kept in /var/lib/mqtt-video" >&2; exit 1; }
step "https: the page, certificate $(grep -m1 -o 'fingerprint=[0-9A-F:]*' "$root/tmp/serve.log")"

reply="pages/check-image/describe"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t "$reply" -C 1 -W 30 > "$root/tmp/describe.json" & sub=$!
sleep 0.5
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -t video/describe -m "{\"url\":\"builtin://testsrc\",\"reply_topic\":\"$reply\"}"
wait "$sub" || { echo "check-image: no describe reply; serve said:" >&2; cat "$root/tmp/serve.log" >&2; exit 1; }
grep -q '"mimeCodec":"video/mp4' "$root/tmp/describe.json" || { cat "$root/tmp/describe.json" >&2; exit 1; }
step "describe: $(cut -c1-160 "$root/tmp/describe.json")"
step "ok"
