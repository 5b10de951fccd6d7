// The /demo page: type a line, hear it, watch the mouth. Also the browsers' test hook,
// window.aivtuberDemo = {speak(text, voice?), cancel(), stats(), dropOutput(), client}.
import { AIVTuberClient, VISEME_OPENNESS } from "/static/aivtuber.js";

const $ = (id) => document.getElementById(id);
const MOUTH_MIN_RY = 2;
const MOUTH_MAX_RY = 26;
const SMOOTHING = 0.45; // per animation frame, towards the target: soft but quick
const LEVEL_GATE = 0.005; // below this RMS the mouth stays shut

// A ticket or key given in the address is taken, then removed from it (and from history)
// so it is not left in bookmarks, screenshots or the Referer of anything else.
const params = new URLSearchParams(location.search);
for (const [param, field] of [["ticket", "ticket"], ["api_key", "apikey"]]) {
  if (params.has(param)) $(field).value = params.get(param);
}
if (params.has("ticket") || params.has("api_key")) {
  history.replaceState(null, "", location.pathname);
  $("auth").open = true;
}

let client = null;
let credentials = null;
let mouthTarget = 0;
let mouthOpen = 0;
let usesVisemes = false;
let lastEnd = null;
let pcmDigest = 0x811c9dc5; // FNV-1a of the line's PCM as received: tests compare it

function currentClient() {
  const wanted = `${$("ticket").value.trim()}\n${$("apikey").value.trim()}`;
  if (client && wanted === credentials) return client;
  if (client) client.close();
  credentials = wanted;
  const options = {};
  if ($("ticket").value.trim()) options.ticket = $("ticket").value.trim();
  if ($("apikey").value.trim()) options.api_key = $("apikey").value.trim();
  client = new AIVTuberClient(options);
  client.on("level", (event) => {
    if (usesVisemes && event.detail.level > 0) return;
    const level = event.detail.level;
    mouthTarget = level < LEVEL_GATE ? 0 : Math.min(1, Math.sqrt(level) * 2.2);
  });
  client.on("viseme", (event) => {
    usesVisemes = true;
    mouthTarget = event.detail.openness;
  });
  client.on("chunk", (event) => {
    const bytes = new Uint8Array(event.detail.pcm);
    let hash = pcmDigest;
    for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
    pcmDigest = hash;
  });
  client.on("start", () => showError(""));
  client.on("end", (event) => {
    lastEnd = event.detail;
    mouthTarget = 0;
  });
  client.on("error", (event) => showError(`${event.detail.code}: ${event.detail.message}`));
  return client;
}

function showError(text) {
  $("error").textContent = text;
}

async function loadVoices() {
  let voices = [];
  try {
    voices = await currentClient().listVoices();
  } catch (error) {
    return; // shown by the error event; the default voice stays selectable
  }
  const select = $("voice");
  select.replaceChildren(new Option("default voice", ""));
  for (const voice of voices) {
    const label = `${voice.name} (${voice.language || "?"}, ${voice.engine}${voice.ready === false ? ", loading" : ""})`;
    select.add(new Option(label, voice.name));
  }
}

async function speak(text, voice) {
  usesVisemes = false;
  mouthTarget = 0;
  lastEnd = null;
  pcmDigest = 0x811c9dc5;
  showError("");
  return currentClient().speak(text, { voice: voice || $("voice").value || undefined });
}

function cancel() {
  if (client) client.cancel();
}

function stats() {
  const base = client ? client.stats() : new AIVTuberClient().stats();
  return { ...base, mouthOpen, lastEnd, pcmDigest };
}

function draw() {
  mouthOpen += (mouthTarget - mouthOpen) * SMOOTHING;
  if (mouthTarget === 0 && mouthOpen < 0.01) mouthOpen = 0;
  $("mouth").setAttribute("ry", (MOUTH_MIN_RY + (MOUTH_MAX_RY - MOUTH_MIN_RY) * mouthOpen).toFixed(2));
  const s = client ? client.stats() : null;
  if (s) {
    const ttfa = s.ttfaMs === null ? "-" : `${s.ttfaMs} ms`;
    $("stats").textContent =
      `${s.state} · first audio ${ttfa} · buffer ${s.bufferMs} ms (jitter ${s.jitterMs} ms)` +
      ` · chunks ${s.chunksPlayed}/${s.chunksReceived} · underruns ${s.underruns}` +
      (s.lastViseme ? ` · viseme ${s.lastViseme}` : "");
  }
  requestAnimationFrame(draw);
}

$("speak").addEventListener("click", () => {
  const text = $("text").value.trim();
  if (text) speak(text).catch(() => {}); // errors are shown by the error event
});
$("stop").addEventListener("click", cancel);
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("speak").click();
});
for (const field of ["ticket", "apikey"]) $(field).addEventListener("change", loadVoices);

window.aivtuberDemo = {
  speak,
  cancel,
  stats,
  /** Close the output socket as a network drop would; the client resumes on its own. */
  dropOutput: () => client?.dropOutput(),
  get client() {
    return client;
  },
  visemeOpenness: VISEME_OPENNESS,
};

requestAnimationFrame(draw);
loadVoices();
