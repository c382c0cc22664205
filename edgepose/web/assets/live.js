// The live view page: the MJPEG stream in <img>, figures from /api/health and /api/keypoints.
"use strict";

const $ = (id) => document.getElementById(id);

function fmt(value, digits, unit) {
  return typeof value === "number" ? value.toFixed(digits) + unit : "–";
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

async function refreshHealth() {
  try {
    const h = await getJson("/api/health");
    $("device").textContent = h.device_id || "";
    $("state").textContent = h.state + (h.state_reason ? " – " + h.state_reason : "");
    $("state").className = "state " + h.state;
    $("fps").textContent = fmt(h.fps && h.fps.inference, 1, " fps");
    const latency = h.latency_ms && h.latency_ms.capture_to_publish;
    $("latency").textContent = fmt(latency && latency.p50, 1, " ms");
    $("backend").textContent = h.backend;
    $("backend").title = h.backend_reason || "";
    $("model").textContent = h.model || "–";
    $("mqtt").textContent = h.mqtt && h.mqtt.connected ? "connected" : "disconnected";
  } catch (error) {
    $("state").textContent = "unreachable";
    $("state").className = "state offline";
  }
}

async function refreshPeople() {
  try {
    const k = await getJson("/api/keypoints");
    $("people").textContent = String(k.poses.length);
  } catch (error) {
    $("people").textContent = "–";
  }
}

// When the stream is refused (all web.max_clients slots taken) or drops, show snapshots instead
// and try the stream again now and then.
let snapshotTimer = null;
function fallBackToSnapshots() {
  if (snapshotTimer !== null) return;
  $("note").textContent = "live stream unavailable (too many viewers?): showing snapshots";
  snapshotTimer = setInterval(() => { $("live").src = "/snapshot.jpg?t=" + Date.now(); }, 1000);
  setTimeout(() => {
    clearInterval(snapshotTimer);
    snapshotTimer = null;
    $("note").textContent = "";
    $("live").src = "/stream.mjpg?t=" + Date.now();
  }, 30000);
}
$("live").addEventListener("error", fallBackToSnapshots);

refreshHealth();
refreshPeople();
setInterval(refreshHealth, 2000);
setInterval(refreshPeople, 1000);
