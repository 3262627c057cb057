#!/usr/bin/env bash
# Installs what building, running and testing mqtt-video needs on Debian 12 / Ubuntu 22.04+:
# FFmpeg's development files (the server links libav* in-process), the ffmpeg CLI (test fixtures and the
# benchmark's reference only), GStreamer's RTSP server (the live test source), mosquitto, Node.js with npm
# (the page's MQTT.js, the browser tests' drivers), the three browser engines the page is tested in (Chromium;
# Firefox ESR, driven over WebDriver BiDi; WebKitGTK's WebKitWebDriver and MiniBrowser under Xvfb), nginx and
# Caddy (the reverse proxies of the sub-path test), rtsp-server-perl (a camera that serves RTP over UDP only), openssl
# (certificates for the TLS test), iproute2 (the test's LAN-like addresses), debootstrap, mosquitto-clients and
# curl (the docker image's check in a chroot), prometheus (its promtool checks /metrics), rabbitmq-server
# (the broker matrix: its MQTT plugin, one node and a two-node cluster) and cargo-nextest (the Rust tests'
# runner). Idempotent.
set -euo pipefail

PACKAGES=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev libavdevice-dev libswscale-dev libswresample-dev
  ffmpeg fonts-dejavu-core mosquitto chromium rtsp-server-perl openssl prometheus iproute2
  firefox-esr webkit2gtk-driver xvfb xauth nginx-light caddy debootstrap mosquitto-clients curl rabbitmq-server
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-tools gstreamer1.0-x
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Five of them are daemons that Debian starts where systemd runs (RTSP on 554/5545, Prometheus on 9090, nginx
  # and Caddy on 80, RabbitMQ on 5672): the tests start their own on free ports, so the ones installed here are
  # stopped and not started at boot (nginx's service comes with nginx-light).
  if [ -d /run/systemd/system ]; then
    for service in rtsp-server-perl prometheus nginx caddy rabbitmq-server; do
      if [[ " ${missing[*]} " == *" $service"* ]]; then $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
    done
  fi
fi

if ! command -v npm >/dev/null; then
  # Debian's nodejs is older than the one rustup-style images ship, but runs MQTT.js and playwright-core.
  sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust is missing. Install it from https://rustup.rs (rustup), then run this again." >&2
  exit 1
fi

# The test command runs the Rust tests under cargo-nextest (one process per test). CI machines have it; a
# machine with only rustup's cargo gets it from crates.io here, once (a few minutes of compiling).
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi
