// The /demo page: type a line, hear it, watch the mouth and the captions. "Stream it like an
// LLM" writes the text piece by piece at the chosen tokens/s through client.stream(), as a
// language model's reply would come. Also the browser tests' hook, window.aivtuberDemo.
import { AIVTuberClient, VISEME_OPENNESS } from "/static/aivtuber.js";

const $ = (id) => document.getElementById(id);
const MOUTH_MIN_RY = 2;
const MOUTH_MAX_RY = 26;
const MOUTH_RX = 22;
const MOUTH_FORM_RX = 7; // ParamMouthForm -1..1 narrows or widens the mouth this much

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
let mouth = { open: 0, form: 0 }; // the client's smoothed mouth, as drawn
let lastEnd = null;
let lastCancel = null;
let pcmDigest = 0x811c9dc5; // FNV-1a of the line's PCM as received: tests compare it
const writers = new Set(); // the LLM stand-ins writing replies (more than one when queued)
// The captions of the line heard now (a queued line's take over with its first word).
const caption = { heard: "", written: "", words: [], taskId: null };

function currentClient() {
  const wanted = `${$("ticket").value.trim()}\n${$("apikey").value.trim()}`;
  if (client && wanted === credentials) return client;
  if (client) client.close();
  credentials = wanted;
  const options = {};
  if ($("ticket").value.trim()) options.ticket = $("ticket").value.trim();
  if ($("apikey").value.trim()) options.api_key = $("apikey").value.trim();
  client = new AIVTuberClient(options);
  client.on("mouth", (event) => {
    mouth = { open: event.detail.live2d.ParamMouthOpenY, form: event.detail.live2d.ParamMouthForm };
  });
  client.on("start", () => showError(""));
  client.on("word", (event) => {
    // heardText: the line's text as written, up to the end of this word.
    if (event.detail.taskId !== caption.taskId) Object.assign(caption, { taskId: event.detail.taskId, words: [] });
    caption.words.push(event.detail.word);
    caption.heard = event.detail.heardText;
    caption.written = event.detail.text;
    showCaption();
  });
  client.on("chunk", (event) => {
    const bytes = new Uint8Array(event.detail.pcm);
    let hash = pcmDigest;
    for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
    pcmDigest = hash;
  });
  client.on("end", (event) => {
    lastEnd = event.detail;
  });
  client.on("error", (event) => showError(`${event.detail.code}: ${event.detail.message}`));
  return client;
}

function showError(text) {
  $("error").textContent = text;
}

// --- captions: the words heard, then (faded) what is written but not heard yet --------------

function showCaption() {
  const heard = document.createElement("span");
  heard.className = "heard";
  heard.textContent = caption.heard;
  const written = document.createElement("span");
  written.className = "written";
  written.textContent = caption.written.slice(caption.heard.length);
  $("captions").replaceChildren(heard, written);
}

function resetLine(text, queue) {
  lastEnd = null;
  lastCancel = null;
  showError("");
  if (queue) return; // the line playing keeps its captions (and its digest) until it ends
  pcmDigest = 0x811c9dc5;
  Object.assign(caption, { heard: "", written: text, words: [], taskId: null });
  showCaption();
}

// --- speaking --------------------------------------------------------------------------------

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

function lineOptions(voice, queue) {
  return { voice: voice || $("voice").value || undefined, queue: queue ?? $("queue").checked };
}

/** Speak a whole line at once; a Promise of the `end` detail. */
async function speak(text, voice, queue) {
  const options = lineOptions(voice, queue);
  if (!options.queue) stopWriting();
  resetLine(text, options.queue);
  return currentClient().speak(text, options);
}

/**
 * LLM-like pieces: a token is up to 4 characters (code points: a surrogate pair is never
 * split) with the spaces before it; joined, they are the text.
 */
function tokens(text) {
  return text.match(/\s*\S{1,4}|\s+$/gu) || [];
}

/**
 * Write `text` into client.stream() token by token at `tokensPerSecond`, as an LLM would,
 * then end() it; a Promise of the `end` detail (once everything was heard).
 */
async function streamReply(text, { tokensPerSecond, voice, queue } = {}) {
  const options = lineOptions(voice, queue);
  if (!options.queue) stopWriting();
  resetLine("", options.queue);
  const line = currentClient().stream(options);
  const rate = tokensPerSecond || Number($("rate").value);
  const pieces = tokens(text);
  const state = { stopped: false, timer: null };
  writers.add(state);
  const started = performance.now();
  await new Promise((resolve) => {
    state.resolve = resolve; // stopWriting() ends the wait too
    let index = 0;
    const step = () => {
      if (state.stopped) return resolve();
      // On the schedule of the rate, not of the timers: catch up after a slow tick.
      const due = Math.floor(((performance.now() - started) / 1000) * rate) + 1;
      try {
        while (index < pieces.length && index < due) {
          line.append(pieces[index++]);
        }
      } catch (error) {
        // The line takes no more text (connection lost, stream ended): what was written plays.
        showError(`${error.code}: ${error.message}`);
        state.stopped = true;
        return resolve();
      }
      // Before its first word is heard, the reply being written shows as written (faded).
      if (caption.taskId === null || caption.taskId === line.taskId) {
        caption.written = line.text;
        showCaption();
      }
      if (index >= pieces.length) return resolve();
      state.timer = setTimeout(step, Math.max(1, ((index / rate) * 1000) - (performance.now() - started)));
    };
    step();
  });
  writers.delete(state);
  return state.stopped ? line.done : line.end();
}

function stopWriting() {
  for (const state of writers) {
    state.stopped = true;
    clearTimeout(state.timer);
    state.resolve?.();
  }
  writers.clear();
}

/** Stop: silence now; a Promise of what was heard ({heardText, heardMs}). */
async function cancel() {
  stopWriting();
  if (!client) return { heardText: "", heardMs: 0 };
  lastCancel = await client.cancel();
  return lastCancel;
}

function stats() {
  const base = client ? client.stats() : new AIVTuberClient().stats();
  return {
    ...base,
    mouthOpen: mouth.open,
    mouthForm: mouth.form,
    lastEnd,
    lastCancel,
    pcmDigest,
    captionHeard: caption.heard,
    captionShown: $("captions").textContent,
    captionWords: [...caption.words],
    writing: writers.size > 0,
  };
}

function draw() {
  $("mouth").setAttribute("ry", (MOUTH_MIN_RY + (MOUTH_MAX_RY - MOUTH_MIN_RY) * mouth.open).toFixed(2));
  $("mouth").setAttribute("rx", (MOUTH_RX + MOUTH_FORM_RX * mouth.form).toFixed(2));
  const s = client ? client.stats() : null;
  if (s) {
    const ttfa = s.ttfaMs === null ? "-" : `${s.ttfaMs} ms`;
    $("stats").textContent =
      `${s.state} · first audio ${ttfa} · buffer ${s.bufferMs} ms (jitter ${s.jitterMs} ms,` +
      ` output ${s.outputLatencyMs} ms) · chunks ${s.chunksPlayed}/${s.chunksReceived}` +
      ` · underruns ${s.underruns}` + (s.queued ? ` · ${s.queued} queued` : "") +
      (s.lastViseme ? ` · viseme ${s.lastViseme}` : "");
  }
  requestAnimationFrame(draw);
}

$("speak").addEventListener("click", () => {
  const text = $("text").value.trim();
  if (!text) return;
  const spoken = $("streaming").checked ? streamReply(text) : speak(text);
  spoken.catch(() => {}); // errors are shown by the error event
});
$("stop").addEventListener("click", () => cancel());
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("speak").click();
});
$("rate").addEventListener("input", () => {
  $("rate-shown").textContent = `${$("rate").value} tokens/s`;
});
for (const field of ["ticket", "apikey"]) $(field).addEventListener("change", loadVoices);

window.aivtuberDemo = {
  speak,
  streamReply,
  tokens,
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
