#!/usr/bin/env bash
# Records the fuzzers' seed corpora from real sessions (fuzz/seeds/<target>/), committed so that a fuzz run
# starts from them: an RTMP session as the ffmpeg CLI publishes it, fMP4 as `mqtt-video probe --out` writes
# it, a browser-like MQTT session (mosquitto_sub and mosquitto_pub through the proxy), and the control
# requests and URLs of docs/PROTOCOL.md. Needs a built target/debug/mqtt-video, ffmpeg, mosquitto and its
# clients, and an RTSP session as the GStreamer test camera (tests/support/rtsp_server.py) sends it to ffprobe.
# Run from anywhere: bash fuzz/seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/mqtt-video
seeds=fuzz/seeds
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$seeds"/{rtmp_session,rtmp_chunks,fmp4,request,policy,mqtt_frames,media_headers,marker_splice,rtsp_messages,sdp}

# Starts the recorder on port $1 in front of port $2, recording into $3 (what the client sends, or with
# $4 = server what the server does), and waits until it listens.
record() {
  python3 fuzz/record.py "$1" "$2" "$3" ${4:-} > /dev/null & pids+=($!)
  for _ in $(seq 100); do [ -e "$3" ] && return; sleep 0.05; done
  echo "the recorder did not start" >&2; exit 1
}

# A cut byte first (the targets read it), then the capture.
with_cut() { { printf "\\x$(printf %02x "$1")"; head -c "$3" "$2"; } ; }

# RTMP: ffmpeg publishes 2 s to the server's endpoint through the recorder, with the key and with a wrong one.
broker=$(free_port); rtmp=$(free_port); proxy=$(free_port)
mosquitto -p "$broker" >/dev/null 2>&1 & pids+=($!)
cat > "$work/serve.toml" <<CONF
[broker]
port = $broker
[gateway]
enabled = false
[[ingest]]
name = "studio"
listen = "rtmp://127.0.0.1:$rtmp"
key = "the-right-key-42"
CONF
"$bin" serve --config "$work/serve.toml" 2>"$work/serve.log" & pids+=($!)
record "$proxy" "$rtmp" "$work/rtmp.bin"
sleep 1
for key in the-right-key-42 a-wrong-key-000; do
  : > "$work/rtmp.bin"
  ffmpeg -v error -re -f lavfi -i testsrc2=size=320x240:rate=30 -f lavfi -i sine=sample_rate=48000 -t 2 \
    -c:v libx264 -preset veryfast -tune zerolatency -g 30 -pix_fmt yuv420p -c:a aac \
    -f flv "rtmp://127.0.0.1:$proxy/live/$key" 2>/dev/null || true
  sleep 0.3
  with_cut 255 "$work/rtmp.bin" 32768 > "$seeds/rtmp_session/ffmpeg-$key.bin"
  with_cut 3 "$work/rtmp.bin" 20000 > "$seeds/rtmp_session/ffmpeg-$key-cut3.bin"
  # The chunk stream alone, after the 3073 handshake bytes.
  tail -c +3074 "$work/rtmp.bin" > "$work/chunks.bin"
  with_cut 64 "$work/chunks.bin" 32768 > "$seeds/rtmp_chunks/ffmpeg-$key.bin"
done

# MQTT: a subscriber and a publisher through the recorder to mosquitto.
mqtt_proxy=$(free_port)
record "$mqtt_proxy" "$broker" "$work/mqtt.bin"
timeout 2 mosquitto_sub -p "$mqtt_proxy" -i page_ab12 -k 20 -t 'pages/page_ab12/#' -W 1 >/dev/null 2>&1 || true
mosquitto_pub -p "$mqtt_proxy" -i page_cd34 -k 20 -t video/play \
  -m '{"url":"builtin://testsrc","reply_topic":"pages/page_cd34/media"}' >/dev/null 2>&1 || true
with_cut 7 "$work/mqtt.bin" 4096 > "$seeds/mqtt_frames/mosquitto-clients.bin"

# fMP4 as the server's muxer writes it.
"$bin" probe builtin://testsrc --seconds 1 --out "$work/fmp4" >/dev/null
cat "$work/fmp4/init.mp4" "$work/fmp4/"*.m4s > "$work/fmp4.bin"
with_cut 97 "$work/fmp4.bin" 40000 > "$seeds/fmp4/testsrc-1s.bin"

# An RTSP camera's replies and interleaved RTP (H.264 and AAC) over TCP, as the marker splice reads them.
camera_port=$(free_port); rtsp_proxy=$(free_port)
/usr/bin/python3 tests/support/rtsp_server.py --port "$camera_port" --path /live > "$work/camera.log" & pids+=($!)
for _ in $(seq 100); do grep -q READY "$work/camera.log" && break; sleep 0.1; done
record "$rtsp_proxy" "$camera_port" "$work/rtsp.bin" server
timeout 3 ffprobe -v error -rtsp_transport tcp -show_packets "rtsp://127.0.0.1:$rtsp_proxy/live" >/dev/null 2>&1 || true
with_cut 200 "$work/rtsp.bin" 60000 > "$seeds/marker_splice/gstreamer-h264-aac.bin"
with_cut 5 "$work/rtsp.bin" 8000 > "$seeds/marker_splice/gstreamer-cut5.bin"

# An ONVIF camera with a backchannel (GStreamer's RTSPOnvifMediaFactory) as probe talks to it: a whole session
# as its pipeline plays it (DESCRIBE, SETUP, PLAY, interleaved RTP), then its answer to the DESCRIBE requiring
# the backchannel; that SDP alone for the SDP target. A camera's login challenges by hand.
onvif_port=$(free_port); onvif_proxy=$(free_port)
/usr/bin/python3 tests/support/rtsp_server.py --port "$onvif_port" --path /live --no-audio \
  --backchannel "$work/backchannel.raw" > "$work/onvif.log" & pids+=($!)
for _ in $(seq 100); do grep -q READY "$work/onvif.log" && break; sleep 0.1; done
record "$onvif_proxy" "$onvif_port" "$work/onvif.bin" server
"$bin" probe "rtsp://127.0.0.1:$onvif_proxy/live" --seconds 1 >/dev/null 2>&1 || true
with_cut 13 "$work/onvif.bin" 20000 > "$seeds/rtsp_messages/gstreamer-session.bin"
# The last DESCRIBE's answer is probe's, with the backchannel.
python3 - "$work/onvif.bin" "$seeds/rtsp_messages/gstreamer-backchannel-describe.bin" "$seeds/sdp/gstreamer-onvif.sdp" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
sdp = data.rindex(b"v=0")
answer = data.rindex(b"RTSP/1.0 200", 0, sdp)
open(sys.argv[2], "wb").write(bytes([9]) + data[answer:])
open(sys.argv[3], "wb").write(data[sdp:])
PY
printf '\x07RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nWWW-Authenticate: Digest realm="IP Camera", nonce="7f3c", qop="auth"\r\nWWW-Authenticate: Basic realm="IP Camera"\r\n\r\n' \
  > "$seeds/rtsp_messages/login-challenges.bin"
printf '%s' 'rtsp://admin:p%40ss@192.0.2.7:8554/Streaming/Channels/101' > "$seeds/sdp/camera-url.txt"

# Talk frames as a page sends them (docs/PROTOCOL.md, "Talk back"): 20 ms of a 1 kHz tone at 16 kHz, and a
# press's last frame at 48 kHz.
mkdir -p "$seeds/talk_frames"
python3 - "$seeds/talk_frames" <<'PY'
import math, struct, sys
def frame(talker, end, rate, seq, pcm):
    t = talker.encode()
    return bytes([1, 1 if end else 0]) + struct.pack(">HI", rate, seq) + bytes([len(t)]) + t + b"".join(struct.pack("<h", s) for s in pcm)
pcm = [int(10000 * math.sin(2 * math.pi * 1000 * i / 16000)) for i in range(320)]
open(sys.argv[1] + "/tone-16k-20ms.bin", "wb").write(frame("pages/page_ab12/talk", False, 16000, 0, pcm))
open(sys.argv[1] + "/last-48k.bin", "wb").write(frame("pages/page_ab12/talk", True, 48000, 250, pcm[:96]))
PY

# SPS NAL units as x264 writes them, and ADTS frames as ffmpeg's AAC encoder does.
for spec in "640x360 high yuv420p x264-high-360p" "1280x720 high422 yuv422p x264-high422-720p"; do
  set -- $spec
  ffmpeg -v error -y -f lavfi -i "testsrc2=size=$1:rate=30" -frames:v 1 -c:v libx264 -profile:v "$2" -pix_fmt "$3" "$work/$4.h264"
  python3 - "$work/$4.h264" "$seeds/media_headers/$4.sps" <<'PY'
import re, sys
data = open(sys.argv[1], "rb").read()
starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)] + [len(data)]
nals = [data[a + 3:b].rstrip(b"\x00") for a, b in zip(starts, starts[1:])]
open(sys.argv[2], "wb").write(next(n for n in nals if n and n[0] & 0x1F == 7))
PY
done
ffmpeg -v error -y -f lavfi -i sine=sample_rate=48000 -t 0.1 -c:a aac -f adts "$work/tone.aac"
head -c 400 "$work/tone.aac" > "$seeds/media_headers/aac-48k.adts"

# Requests and URLs as pages send them.
printf '%s' '{"url":"rtsp://cameras.example.net/door","reply_topic":"pages/page_ab12/info"}' > "$seeds/request/describe.json"
printf '%s' '{"url":"builtin://testsrc","reply_topic":"pages/page_ab12/media"}' > "$seeds/request/play.json"
printf '%s' '{"reply_topic":"pages/page_ab12/media"}' > "$seeds/request/stop.json"
for url in rtsp://cameras.example.net/door "rtsp://cameras.example.net/../etc" "http://[::1]:8000/hls/live.m3u8" \
  https://example.com/live.m3u8 "rtsp://viewer:secret@192.168.1.20:554/stream1" "RTSP://Cameras.Example.Net/x%2F.."; do
  printf '%s' "$url" > "$seeds/policy/$(printf '%s' "$url" | md5sum | cut -c1-12).txt"
done
ls -l "$seeds"/*
