#!/usr/bin/env bash
# `make run`: the daemon on the demo photos, publishing to a local broker.
# Uses a broker already answering on localhost:$MQTT_PORT; else starts a private mosquitto on
# loopback for the session (stopped on exit); else runs anyway (the daemon retries) and says how
# to get one.
set -euo pipefail

port="${MQTT_PORT:-1883}"
edgepose="${EDGEPOSE:-edgepose}"
broker_pid=""

broker_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [[ -n "$broker_pid" ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if broker_answers "$port"; then
    echo "run: using the MQTT broker already on localhost:$port"
elif command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then
    mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    conf="$(mktemp -t edgepose-mosquitto.XXXXXX.conf)"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$conf"
    # Its own session: Ctrl-C goes to the terminal's whole process group, and the broker must
    # outlive the daemon long enough to receive its "offline".
    setsid "$mosquitto_bin" -c "$conf" >/dev/null 2>&1 &
    broker_pid=$!
    for _ in $(seq 50); do
        broker_answers "$port" && break
        sleep 0.1
    done
    echo "run: started a private mosquitto on 127.0.0.1:$port (stopped when you press Ctrl-C)"
else
    echo "run: no MQTT broker on localhost:$port and mosquitto is not installed." >&2
    echo "run: install one with: sudo apt install mosquitto mosquitto-clients  (the daemon keeps retrying meanwhile)" >&2
fi
echo "run: watch the stream with: mosquitto_sub -h localhost -p $port -t 'edgepose/+/#' -v"
echo "run: press Ctrl-C to stop"

# Not exec: the EXIT trap must stop the private broker after the daemon exits. Ctrl-C reaches the
# daemon directly (same process group) and it stops cleanly; this shell only waits for it.
trap 'true' INT TERM
status=0
"$edgepose" run -c config/edgepose.yaml \
    --set camera.source=demo --set "mqtt.port=$port" --set logging.status_interval_s=3 || status=$?
exit "$status"
