#!/bin/sh
# Writes mosquitto's password file from the environment (the server's user, and the viewers of
# compose.rights.yaml), then runs mosquitto (the official image's
# entrypoint runs this as root; mosquitto drops to its own user and must be able to read the file).
set -eu
if [ -z "${MQTT_VIDEO_PASSWORD:-}" ]; then
  echo "mosquitto-start: set MQTT_VIDEO_PASSWORD (the mqtt-video server's broker password)" >&2
  exit 1
fi
passwd=/mosquitto/data/passwd
umask 077
rm -f "$passwd"
mosquitto_passwd -c -b "$passwd" mqtt-video "$MQTT_VIDEO_PASSWORD"
# Viewers (compose.rights.yaml): "user:password" pairs, space-separated.
for pair in ${MQTT_VIDEO_VIEWERS:-}; do
  user=${pair%%:*}
  password=${pair#*:}
  if [ -z "$user" ] || [ "$user" = "$pair" ] || [ -z "$password" ]; then
    echo "mosquitto-start: an entry of MQTT_VIDEO_VIEWERS is not user:password" >&2
    exit 1
  fi
  mosquitto_passwd -b "$passwd" "$user" "$password"
done
chown mosquitto:mosquitto "$passwd" 2>/dev/null || true
exec mosquitto -c /mosquitto/config/mosquitto.conf
