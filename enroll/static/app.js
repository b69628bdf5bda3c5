// Upload page of the speaker registry: enroll, identify, list and delete speakers through the JSON API.
// Microphone recordings are decoded in the browser and sent as 16 kHz 16-bit mono WAV, which the server
// reads (the MediaRecorder formats, webm/opus or mp4, it does not).
"use strict";

const WAV_RATE = 16000;
const $ = (id) => document.getElementById(id);

// --- talking to the API ----------------------------------------------------------------------------------
// With a token set on the server, the page asks for it once per tab and sends it as a bearer token.
async function api(method, path, body, retried = false) {
  const token = sessionStorage.getItem("token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { method, body, headers });
  if (response.status === 401 && !retried) {
    const entered = window.prompt("This registry needs its access token:");
    if (entered) {
      sessionStorage.setItem("token", entered.trim());
      return api(method, path, body, true);
    }
  }
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function say(element, message, isError = false) {
  element.textContent = message;
  element.classList.toggle("error", isError);
}

function speakerPath(name) {
  return "/speakers/" + encodeURIComponent(name);
}

// --- recording: MediaRecorder, then decode and resample to a mono WAV ---------------------------------------
function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + 2 * samples.length);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);          // fmt chunk size
  view.setUint16(20, 1, true);           // PCM
  view.setUint16(22, 1, true);           // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true);    // bytes per second
  view.setUint16(32, 2, true);           // bytes per frame
  view.setUint16(34, 16, true);          // bits per sample
  text(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => {
    const clipped = Math.max(-1, Math.min(1, x));
    view.setInt16(44 + 2 * i, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
  });
  return new Blob([buffer], { type: "audio/wav" });
}

async function toWav(blob) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  // Rendering through a one-channel offline context mixes down to mono and resamples.
  const offline = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * WAV_RATE)), WAV_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return { wav: encodeWav(rendered.getChannelData(0), WAV_RATE), seconds: rendered.duration };
}

// A record button: the first press starts recording, the second stops it and hands a WAV File to onClip.
function recorderButton(button, status, onClip) {
  const idle = button.textContent;
  let recorder = null;
  let count = 0;
  button.addEventListener("click", async () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      say(status, "This browser cannot record audio; choose a file instead.", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      say(status, `Microphone not available: ${err.message}`, true);
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
    recorder.addEventListener("stop", async () => {
      stream.getTracks().forEach((t) => t.stop());
      const type = recorder.mimeType;
      recorder = null;
      button.textContent = idle;
      button.setAttribute("aria-pressed", "false");
      try {
        const { wav, seconds } = await toWav(new Blob(chunks, { type }));
        count += 1;
        onClip(new File([wav], `recording-${count}.wav`, { type: "audio/wav" }), seconds);
        say(status, `Recorded ${seconds.toFixed(1)} s.`);
      } catch (err) {
        say(status, `Could not convert the recording: ${err.message}`, true);
      }
    });
    recorder.start();
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
    say(status, "Recording… press the button again to stop.");
  });
}

// A list of recorded clips, each with a remove button.
function recordingList(list) {
  const clips = [];
  const render = () => {
    list.replaceChildren(...clips.map((clip, i) => {
      const item = document.createElement("li");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${clip.file.name}`);
      remove.addEventListener("click", () => { clips.splice(i, 1); render(); });
      item.append(`${clip.file.name} (${clip.seconds.toFixed(1)} s) `, remove);
      return item;
    }));
  };
  return {
    files: () => clips.map((c) => c.file),
    add: (file, seconds) => { clips.push({ file, seconds }); render(); },
    set: (file, seconds) => { clips.splice(0, clips.length, { file, seconds }); render(); },
    clear: () => { clips.length = 0; render(); },
  };
}

// --- speakers -----------------------------------------------------------------------------------------------
async function refreshHealth() {
  try {
    const h = await api("GET", "/health");
    say($("health"), `${h.speakers} speaker(s) enrolled · encoder ${h.fingerprint} · ` +
      `identify threshold ${h.threshold.toFixed(3)} (lets ${(100 * h.operating_points.fpir).toFixed(1)} % of ` +
      `strangers through at this size) · clips up to ${h.max_seconds} s, uploads up to ${h.max_upload_mb} MB`);
  } catch (err) {
    say($("health"), `Service unavailable: ${err.message}`, true);
  }
}

async function refreshSpeakers() {
  const status = $("speakers-status");
  let speakers;
  try {
    ({ speakers } = await api("GET", "/speakers"));
  } catch (err) {
    say(status, err.message, true);
    return;
  }
  const rows = speakers.map((s) => {
    const row = document.createElement("tr");
    row.dataset.name = s.name;
    const cells = [s.name, String(s.n_clips), s.seconds.toFixed(1)].map((text) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      return cell;
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${s.name}`);
    remove.addEventListener("click", () => deleteSpeaker(s.name));
    const action = document.createElement("td");
    action.append(remove);
    row.append(...cells, action);
    return row;
  });
  $("speakers").tBodies[0].replaceChildren(...rows);
  $("speakers-empty").hidden = speakers.length > 0;
  refreshHealth();
}

// --- embedding map ----------------------------------------------------------------------------------------
async function showMap() {
  const status = $("map-status");
  say(status, "Drawing…");
  const token = sessionStorage.getItem("token");
  const response = await fetch("/map.png", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    say(status, message, true);
    return;
  }
  const img = $("map");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await response.blob());
  img.hidden = false;
  say(status, "");
}

async function deleteSpeaker(name) {
  if (!confirm(`Delete ${name} and all their clips?`)) return;
  try {
    await api("DELETE", speakerPath(name));
    say($("speakers-status"), `Deleted ${name}.`);
  } catch (err) {
    say($("speakers-status"), err.message, true);
  }
  refreshSpeakers();
}

// --- enroll -------------------------------------------------------------------------------------------------
const enrollRecordings = recordingList($("enroll-recordings"));
recorderButton($("enroll-record"), $("enroll-status"), enrollRecordings.add);

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("enroll-status");
  const name = $("enroll-name").value.trim();
  const files = [...$("enroll-files").files, ...enrollRecordings.files()];
  if (!name) return say(status, "Enter a name.", true);
  if (!files.length) return say(status, "Choose or record at least one clip.", true);
  const body = new FormData();
  files.forEach((f) => body.append("files", f, f.name));
  if ($("enroll-replace").checked) body.append("replace", "1");
  $("enroll-submit").disabled = true;
  say(status, `Enrolling ${name} from ${files.length} clip(s)…`);
  try {
    const s = await api("POST", speakerPath(name), body);
    say(status, `Enrolled ${s.name}: ${s.n_clips} clip(s), ${s.seconds.toFixed(1)} s of speech.`);
    $("enroll-files").value = "";
    enrollRecordings.clear();
    refreshSpeakers();
  } catch (err) {
    say(status, err.message, true);
  } finally {
    $("enroll-submit").disabled = false;
  }
});

// --- identify -----------------------------------------------------------------------------------------------
const identifyRecording = recordingList($("identify-recordings"));
recorderButton($("identify-record"), $("identify-status"), (file, seconds) => {
  $("identify-file").value = "";
  identifyRecording.set(file, seconds);
});
$("identify-file").addEventListener("change", () => identifyRecording.clear());

function renderMatches(matches, threshold) {
  // Scores are cosines (at most 1) or AS-norm scores (several units): a bar's full length is the larger of
  // 1, one and a half times the threshold, and the best score, so the threshold mark stays inside it.
  const top = Math.max(1, 1.5 * threshold, ...matches.map((m) => m.score));
  const share = (v) => `${Math.max(0, Math.min(1, v / top)) * 100}%`;
  const items = matches.map((m) => {
    const item = document.createElement("li");
    item.className = m.accepted ? "match accepted" : "match";
    item.dataset.name = m.name;
    item.dataset.score = String(m.score);
    const name = document.createElement("span");
    name.className = "match-name";
    name.textContent = m.name;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(top));
    bar.setAttribute("aria-valuenow", String(m.score));
    bar.setAttribute("aria-label", `score of ${m.name}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = share(m.score);
    const mark = document.createElement("span");
    mark.className = "threshold";
    mark.style.left = share(threshold);
    bar.append(fill, mark);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${m.score.toFixed(3)} ${m.accepted ? "✓ match" : "below threshold"}`;
    item.append(name, bar, score);
    return item;
  });
  $("matches").replaceChildren(...items);
}

$("identify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("identify-status");
  const file = $("identify-file").files[0] || identifyRecording.files()[0];
  if (!file) return say(status, "Choose or record a clip.", true);
  const body = new FormData();
  body.append("file", file, file.name);
  body.append("k", $("identify-k").value || "5");
  $("identify-submit").disabled = true;
  say(status, `Identifying ${file.name}…`);
  try {
    const { matches, threshold } = await api("POST", "/identify", body);
    renderMatches(matches, threshold);
    const best = matches.find((m) => m.accepted);
    if (!matches.length) say(status, "Nobody is enrolled yet.");
    else if (best) say(status, `Best match: ${best.name} (score ${best.score.toFixed(3)}).`);
    else say(status, `Unknown speaker: nobody scores above the threshold ${threshold.toFixed(3)}.`);
  } catch (err) {
    $("matches").replaceChildren();
    say(status, err.message, true);
  } finally {
    $("identify-submit").disabled = false;
  }
});

refreshSpeakers();
$("map-show").addEventListener("click", showMap);
