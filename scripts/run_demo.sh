#!/usr/bin/env bash
# `make run`: the daemon on the demo photos, publishing to a local broker.
# Uses a broker already answering on localhost:$MQTT_PORT; else starts a private mosquitto on
# loopback for the session (stopped on exit); else, with no mosquitto installed, the embedded
# pure-Python broker (amqtt, in the dev extra); else runs anyway (the daemon retries) and says how
# to get one.
set -euo pipefail

port="${MQTT_PORT:-1883}"
# The live view's address (web.listen): another HOST:PORT when 8080 is taken (make run WEB_LISTEN=...).
web_listen="${WEB_LISTEN:-127.0.0.1:8080}"
edgepose="${EDGEPOSE:-edgepose}"
python="${EDGEPOSE_PYTHON:-python3}"
broker_pid=""

broker_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# mosquitto on PATH, else where Debian puts it (/usr/sbin is not on a normal user's PATH).
# EDGEPOSE_MOSQUITTO_DIRS="" looks on PATH alone (the tests' bare machine).
find_mosquitto() {
    local dir
    if command -v mosquitto 2>/dev/null; then
        return 0
    fi
    IFS=: read -ra dirs <<<"${EDGEPOSE_MOSQUITTO_DIRS-/usr/sbin:/usr/local/sbin}"
    for dir in "${dirs[@]}"; do
        if [[ -n "$dir" && -x "$dir/mosquitto" ]]; then
            echo "$dir/mosquitto"
            return 0
        fi
    done
    return 1
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
elif mosquitto_bin="$(find_mosquitto)"; then
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
elif "$python" -c 'import amqtt' 2>/dev/null; then
    setsid "$python" -m edgepose.embedded_broker --port "$port" >/dev/null 2>&1 &
    broker_pid=$!
    for _ in $(seq 100); do
        broker_answers "$port" && break
        sleep 0.1
    done
    if ! broker_answers "$port"; then
        echo "run: the embedded broker did not start on 127.0.0.1:$port" >&2
    fi
    echo "run: mosquitto is not installed: started the embedded MQTT broker (amqtt, MQTT 3.1.1) on 127.0.0.1:$port"
    echo "run: (stopped when you press Ctrl-C; for a real broker: sudo apt install mosquitto mosquitto-clients)"
else
    echo "run: no MQTT broker on localhost:$port and mosquitto is not installed." >&2
    echo "run: install one with: sudo apt install mosquitto mosquitto-clients  (the daemon keeps retrying meanwhile)" >&2
fi
echo "run: watch the stream with: mosquitto_sub -h localhost -p $port -t 'edgepose/+/#' -v"
echo "run: live view: http://$web_listen/  (another address: make run WEB_LISTEN=127.0.0.1:8081)"
echo "run: press Ctrl-C to stop"

# Not exec: the EXIT trap must stop the private broker after the daemon exits. Ctrl-C reaches the
# daemon directly (same process group) and it stops cleanly; this shell only waits for it.
trap 'true' INT TERM
status=0
"$edgepose" run -c config/edgepose.yaml \
    --set camera.source=demo --set "mqtt.port=$port" --set "web.listen=$web_listen" --set logging.status_interval_s=3 || status=$?
exit "$status"
