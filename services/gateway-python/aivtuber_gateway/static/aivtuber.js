// aivtuber.js: the reference browser client of the AIVtuber Gateway.
//
// A dependency-free ES module (served by the gateway at /static/aivtuber.js). It speaks a line
// through /ws/input, streams its PCM from /ws/output/<task_id> and plays it gaplessly with
// AudioBufferSourceNodes scheduled back to back on the AudioContext's clock, at the stream's
// own sample rate (Web Audio resamples each buffer to the context's rate). A jitter buffer,
// sized from how late frames arrived compared with real time, delays the first sample just
// enough. Everything a rig binds to (level, viseme, word, mouth, start, end) fires when the
// audio clock reaches that sample as heard at the output, not when the frame arrived.
//
//   import { AIVTuberClient } from "/static/aivtuber.js";
//   const client = new AIVTuberClient();               // same origin; {url, api_key, ticket}
//   client.on("mouth", (e) => rig.setMouth(e.detail.vrm));
//   await client.speak("Hi chat!");                     // resolves when the line has been heard
//   const line = client.stream();                       // text as an LLM writes it
//   line.append("Hel"); line.append("lo chat!"); await line.end();
//
// Events (CustomEvent, data in event.detail; `time` is on the AudioContext's clock):
// start {taskId, sampleRate, voice, engine, ttfaMs, time}, level {taskId, chunkId, level},
// viseme {taskId, chunkId, shape, openness}, word {taskId, chunkId, word, index, durationMs,
// heardText, text}, mouth {taskId, time, source, vrm, live2d}, chunk {taskId, chunkId,
// samples, level, pcm} (on arrival, before playback), end {taskId, chunks, cancelled,
// serverCancelled, reason, underruns, resumes, ttfaMs, heardText, heardMs, time},
// error {code, message, closeCode, taskId, retryAfterMs}.

/** How far each viseme shape opens the mouth (0..1): a starting point for rigs. */
export const VISEME_OPENNESS = Object.freeze({ a: 1.0, o: 0.8, e: 0.65, u: 0.5, i: 0.45, n: 0.08 });
/** The VRM expression of each viseme shape (`n`, the closed mouth, has none). */
export const VISEME_VRM = Object.freeze({ a: "aa", i: "ih", u: "ou", e: "ee", o: "oh", n: null });
/** Live2D `ParamMouthForm` of each shape: -1 rounded (u, o) .. +1 spread (i, e). */
export const VISEME_FORM = Object.freeze({ a: 0.0, i: 0.7, u: -0.7, e: 0.4, o: -0.5, n: 0.0 });
/** Mouth smoothing time constants: opening follows in ~35 ms, closing relaxes in ~90 ms. */
export const MOUTH_ATTACK_S = 0.035;
export const MOUTH_RELEASE_S = 0.09;
/** Below this frame RMS the mouth is shut (silence between clauses). */
export const LEVEL_GATE = 0.005;

/** What the gateway's close codes mean, as the `code` of an `error` event. */
export const CLOSE_CODES = Object.freeze({
  4401: ["unauthorized", "the gateway needs a valid api_key or ticket"],
  4403: ["origin_forbidden", "the gateway does not accept connections from this page's origin"],
  4429: ["too_many_connections", "too many connections for this credential; try again later"],
  4404: ["task_not_found", "the task does not exist (or has expired)"],
  4400: ["bad_request", "the gateway refused the request"],
  1013: ["backend_unavailable", "the speech service is unavailable; try again later"],
  1009: ["message_too_big", "a message was larger than the gateway accepts"],
});

// The jitter buffer (see docs/frontend.md, "Jitter buffer"). Measured on localhost with
// ./benchmark --scenario browser: frames come at most a few ms later than real time once a
// line plays, so the floor is scheduling safety, and a line's start adds the connection's
// own round trip until frames of that voice have been measured.
const JITTER_FLOOR_S = 0.01; // never start with less buffered than this
const JITTER_START_S = 0.02; // before any line of the voice was measured (+ the round trip)
const MAX_JITTER_S = 2.0; // never hold back more than this, however late frames came
const JITTER_MARGIN_S = 0.01; // above the worst lateness measured
const JITTER_DECAY = 0.5; // per line of frames on time: how fast a large estimate shrinks back
const AUDIBLE_S16 = 328; // -40 dBFS of int16 full scale: the first sample above it is "first audio"
const AUDIBLE = AUDIBLE_S16 / 32768;
const MAX_TRIM_S = 0.2; // leading silence left out of a line, at most
const TRIM_PREROLL_S = 0.001; // kept before a line's first audible sample
const RESUME_ATTEMPTS = 5;
const RESUME_BASE_DELAY_MS = 100;
const CANCEL_CONFIRM_MS = 3000; // wait this long for the server's cancelled audio_complete
const REPLY_TIMEOUT_MS = 10000;
const VOICES_TIMEOUT_MS = 3000;
const GREETING_TIMEOUT_MS = 2000;
const FATAL_OUTPUT_CLOSES = new Set([4400, 4401, 4403, 4404, 4429, 1008, 1009, 1011]);

/** An error with the protocol's code (the `code` of error messages, or a close's meaning). */
export class AIVTuberError extends Error {
  constructor(code, message, closeCode = null) {
    super(message);
    this.name = "AIVTuberError";
    this.code = code;
    this.closeCode = closeCode;
  }
}

/** The error a close code means, or null for a normal close. */
export function closeError(event, what) {
  const known = CLOSE_CODES[event.code];
  const reason = event.reason ? `: ${event.reason}` : "";
  if (known) {
    return new AIVTuberError(known[0], `${what} closed ${event.code} (${known[1]})${reason}`, event.code);
  }
  if (event.code === 1000 || event.code === 1001) return null;
  return new AIVTuberError("connection_lost", `${what} closed ${event.code}${reason}`, event.code);
}

// --- the mouth -----------------------------------------------------------------------------

/** How far a frame's RMS level opens the mouth (0..1), for voices without visemes. */
export function levelOpenness(level) {
  return level < LEVEL_GATE ? 0 : Math.min(1, Math.sqrt(level) * 2.2);
}

function closedMouth() {
  return { vrm: { aa: 0, ih: 0, ou: 0, ee: 0, oh: 0 }, live2d: { ParamMouthOpenY: 0, ParamMouthForm: 0 } };
}

/**
 * Where the mouth is heading: from the viseme being heard (`shape`, one of `a i u e o n`) when
 * the voice sends visemes, else from the frame's RMS `level`. A frame quieter than LEVEL_GATE
 * shuts it either way. VRM gets one expression at full weight (the avatar's own expression
 * decides how wide), Live2D an openness and a form.
 */
export function mouthTarget(shape, level) {
  const mouth = closedMouth();
  if (!(level >= LEVEL_GATE)) return mouth;
  if (shape) {
    const expression = VISEME_VRM[shape];
    if (expression) mouth.vrm[expression] = 1;
    mouth.live2d.ParamMouthOpenY = shape === "n" ? 0 : (VISEME_OPENNESS[shape] ?? 0.5);
    mouth.live2d.ParamMouthForm = VISEME_FORM[shape] ?? 0;
  } else {
    const open = levelOpenness(level);
    mouth.vrm.aa = open;
    mouth.live2d.ParamMouthOpenY = open;
  }
  return mouth;
}

/**
 * Exponential smoothing of mouth parameters on a clock in seconds: a value moving away from
 * rest follows its target with the attack time constant, one moving back towards rest with
 * the release one (a mouth opens fast and closes softly, so short syllables still show).
 */
export class MouthSmoother {
  constructor({ attackS = MOUTH_ATTACK_S, releaseS = MOUTH_RELEASE_S } = {}) {
    this.attackS = attackS;
    this.releaseS = releaseS;
    this.mouth = closedMouth();
    this.time = null;
  }

  /** Move towards `target` ({vrm, live2d}) to clock time `time`; returns the new mouth. */
  update(target, time) {
    const dt = this.time === null ? 0 : Math.max(0, time - this.time);
    this.time = time;
    for (const group of ["vrm", "live2d"]) {
      const values = this.mouth[group];
      for (const key of Object.keys(values)) {
        const goal = target[group][key];
        const value = values[key];
        const tau = Math.abs(goal) > Math.abs(value) ? this.attackS : this.releaseS;
        const next = value + (goal - value) * (1 - Math.exp(-dt / tau));
        values[key] = Math.abs(goal - next) < 0.002 ? goal : next;
      }
    }
    return this.mouth;
  }

  /** True when every parameter is at rest (the mouth shut). */
  get atRest() {
    return Object.values(this.mouth.vrm).every((v) => v === 0) && this.mouth.live2d.ParamMouthOpenY === 0 &&
      this.mouth.live2d.ParamMouthForm === 0;
  }
}

function copyMouth(mouth) {
  return { vrm: { ...mouth.vrm }, live2d: { ...mouth.live2d } };
}

function sameMouth(a, b) {
  if (!a) return false;
  for (const group of ["vrm", "live2d"]) {
    for (const key of Object.keys(a[group])) if (a[group][key] !== b[group][key]) return false;
  }
  return true;
}

// --- the client ----------------------------------------------------------------------------

export class AIVTuberClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] gateway base URL (http(s):// or ws(s)://); default: this page's origin
   * @param {string} [options.api_key] sent as ?api_key= on every socket
   * @param {string|function(): (string|Promise<string>)} [options.ticket] a ticket, or a function
   *   returning a fresh one for each socket (tickets from POST /v1/tickets may be single use)
   * @param {string} [options.voice] default voice of speak() and stream()
   * @param {AudioContext} [options.audioContext] play through this context (else one is made)
   * @param {AudioNode} [options.destination] connect the output here (default: the speakers)
   * @param {boolean} [options.trimSilence] leave out a line's leading silence (default true)
   */
  constructor(options = {}) {
    super();
    const base = options.url || globalThis.location?.origin || "http://127.0.0.1:8000";
    this._base = base.replace(/^http/, "ws").replace(/\/+$/, "");
    this._apiKey = options.api_key || null;
    this._ticket = options.ticket || null;
    this.voice = options.voice || null;
    this._ctx = options.audioContext || null;
    this._destination = options.destination || null;
    this._input = null; // WebSocket of /ws/input
    this._inputOpen = null; // Promise of the open input socket
    this._assigned = null; // task id the input handler gave this connection, not used yet
    this._replies = new Map(); // request_id -> {resolve, reject, timer}
    this._voicesWaiter = null;
    this._lines = []; // lines in the order they play: the one heard now first, queued ones after
    this._last = null; // the line that finished last (what stats() shows when idle)
    this._jitter = new Map(); // voice ("" for the default) -> learned jitter buffer (s)
    this._rttS = null; // shortest request -> answer round trip seen on /ws/input
    this._requests = 0;
    this._tickTimer = null;
    this._rafPending = false;
    this._mouth = new MouthSmoother();
    this._mouthSent = null; // the last mouth event's values
    this.trimSilence = options.trimSilence ?? true;
  }

  /** Subscribe to an event; returns the function that unsubscribes. */
  on(type, handler) {
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  /** The AudioContext (made on first use; call from a click handler on pages without autoplay). */
  get audioContext() {
    if (!this._ctx) this._ctx = new AudioContext({ latencyHint: "interactive" });
    if (!this._out) {
      // sources -> gain (client.output.gain: the volume) -> analyser (what is heard) -> destination
      this._gain = this._ctx.createGain();
      this._analyser = this._ctx.createAnalyser();
      this._analyser.fftSize = 256;
      this._gain.connect(this._analyser);
      this._analyser.connect(this._destination || this._ctx.destination);
      this._out = this._gain;
      this._probe = new Float32Array(this._analyser.fftSize);
    }
    return this._ctx;
  }

  /** The GainNode every line plays through (its `gain` is the volume). */
  get output() {
    this.audioContext;
    return this._gain;
  }

  /** The voices the gateway offers; [] when it cannot tell (then the default voice is used). */
  async listVoices() {
    const ws = await this._openInput();
    if (this._voicesWaiter) return this._voicesWaiter.promise;
    const waiter = {};
    waiter.promise = new Promise((resolve) => {
      waiter.resolve = resolve;
      waiter.timer = setTimeout(() => this._settleVoices([]), VOICES_TIMEOUT_MS);
    });
    this._voicesWaiter = waiter;
    waiter.sentAt = performance.now();
    ws.send(JSON.stringify({ type: "list_voices" }));
    return waiter.promise;
  }

  /**
   * Speak a line: resolves with the `end` detail once it has been heard (or cancelled);
   * rejects with an AIVTuberError. Lines still playing or queued are cancelled first
   * (barge-in), unless `{queue: true}`: then it plays right after them.
   */
  async speak(text, options = {}) {
    const ctx = this.audioContext;
    if (ctx.state !== "running") await ctx.resume();
    return this._begin(text, options, false).done;
  }

  /**
   * A line whose text comes piece by piece (an LLM's reply): `append(piece)`, `flush()`,
   * `end()` (resolves with the `end` detail once everything was heard), `cancel()`. Same
   * barge-in and `{queue: true}` rules as speak(); `{voice}` picks the voice.
   */
  stream(options = {}) {
    const ctx = this.audioContext;
    if (ctx.state !== "running") ctx.resume().catch(() => {}); // plays once it runs
    return new LineStream(this._begin("", options, true));
  }

  /**
   * Barge-in: silence now, cancel the line heard now and every queued one on the server.
   * Resolves with what was heard of the line playing: {heardText, heardMs} (see stats()).
   */
  cancel() {
    const lines = [...this._lines];
    if (!lines.length) return Promise.resolve({ heardText: "", heardMs: 0 });
    for (const line of lines.slice(1).reverse()) line.cancel();
    const heard = lines[0].cancel();
    this._last = lines[0]; // stats() keeps showing the line that was heard
    return Promise.resolve(heard);
  }

  /** The line heard now, else the one that finished last (tests read its schedule). */
  get _line() {
    return this._lines[0] ?? this._last;
  }

  /** Close the output socket as a network drop would (it resumes by itself): for tests. */
  dropOutput() {
    if (this._lines[0]) this._lines[0].dropOutput();
  }

  /** Counters of the line heard now (or the last one), for status lines and tests. */
  stats() {
    const line = this._line;
    const ctx = this._ctx;
    return {
      state: line ? line.state : "idle",
      taskId: line ? line.taskId : null,
      ttfaMs: line ? line.ttfaMs : null,
      ttfaAudibleMs: line ? line.ttfaAudibleMs : null,
      firstFrameMs: line ? line.firstFrameMs : null,
      chunksReceived: line ? line.received : 0,
      chunksPlayed: line ? line.played : 0,
      totalChunks: line ? line.totalChunks : null,
      underruns: line ? line.underruns : 0,
      lateMs: line ? Math.round(line.lateS * 1000) : null,
      trimmedMs: line ? Math.round(line.trimmedS * 1000) : 0,
      bufferMs: line ? Math.max(0, Math.round((line.nextTime - this._heardTime()) * 1000)) : 0,
      jitterMs: Math.round((line && line.jitterS !== null ? line.jitterS : this._jitterFor(this.voice)) * 1000),
      rttMs: this._rttS === null ? null : Math.round(this._rttS * 1000),
      outputLatencyMs: ctx ? Math.round((ctx.outputLatency || 0) * 1000) : null,
      baseLatencyMs: ctx ? Math.round((ctx.baseLatency || 0) * 1000) : null,
      resumes: line ? line.resumes : 0,
      duplicateChunks: line ? line.duplicates : 0,
      cancelled: line ? line.cancelled : false,
      stopLatencyMs: line ? line.stopLatencyMs : null,
      lastViseme: line ? line.lastViseme : null,
      wordsHeard: line ? line.wordsHeard.length : 0,
      heardMs: line ? line.heardMs(this._heardTime()) : 0,
      level: line ? line.level : 0,
      queued: Math.max(0, this._lines.length - 1),
      sampleRate: line ? line.sampleRate : null,
      contextRate: ctx ? ctx.sampleRate : null,
      error: line && line.error ? line.error.code : null,
    };
  }

  /** Close the sockets and the audio (the client can be used again afterwards). */
  close() {
    this.cancel();
    this._stopTicking();
    if (this._input) this._input.close(1000, "client closed");
    this._input = null;
    this._inputOpen = null;
  }

  // --- lines -------------------------------------------------------------------------------

  _begin(text, options, streaming) {
    if (!options.queue) for (const line of [...this._lines].reverse()) line.cancel();
    const voice = options.voice || this.voice || null;
    const after = this._lines.findLast((l) => !l.cancelled) ?? null;
    const line = new Line(this, text, { voice, streaming, after });
    this._lines.push(line);
    this._startTicking();
    this._submit(line);
    return line;
  }

  async _submit(line) {
    try {
      const ws = await this._openInput();
      if (line.finished) return;
      const requestId = `r${++this._requests}`;
      // A stream's text written meanwhile rides on the speak itself.
      const message = { type: "speak", text: line.streaming ? line.takeEarlyText() : line.text, request_id: requestId };
      if (line.voice) message.voice = line.voice;
      if (line.streaming) message.stream = true;
      const accepted = this._awaitReply(requestId);
      // The id the handler reserved for the next line (on connect, then in each answer):
      // listening on it before the speak is answered saves a round trip.
      if (this._assigned) {
        line.listen(this._assigned);
        this._assigned = null;
      }
      const sentAt = performance.now();
      ws.send(JSON.stringify(message));
      const reply = await accepted;
      this._noteRtt(sentAt);
      // Cancelled while the speak was on its way: the task exists only now, cancel it now.
      if (line.cancelled) this._sendCancel(reply.task_id);
      else {
        line.listen(reply.task_id);
        line.accepted();
      }
    } catch (error) {
      line.fail(error);
    }
  }

  _removeLine(line) {
    const index = this._lines.indexOf(line);
    if (index >= 0) this._lines.splice(index, 1);
    if (!this._lines.length || index === 0) this._last = line;
  }

  /**
   * A request sent at `sentAt` (performance.now()) was answered now. The shortest such round
   * trip is the connection's own (the rest is the server's work): a line of a voice not
   * measured yet starts with that much more buffered.
   */
  _noteRtt(sentAt) {
    const rtt = (performance.now() - sentAt) / 1000;
    this._rttS = this._rttS === null ? rtt : Math.min(this._rttS, rtt);
  }

  /** The jitter buffer for a line of `voice`: learned from its earlier lines, else a start. */
  _jitterFor(voice) {
    const learned = this._jitter.get(voice || "");
    if (learned !== undefined) return learned;
    return Math.min(MAX_JITTER_S, Math.max(JITTER_FLOOR_S, JITTER_START_S + (this._rttS ?? 0)));
  }

  /** Learn from a finished line how late its frames came: the next line's jitter buffer. */
  _learnLateness(voice, jitterS, lateS, underran) {
    const wanted = lateS + JITTER_MARGIN_S;
    let next = Math.max(wanted, jitterS * JITTER_DECAY);
    if (underran) next = Math.max(next, jitterS * 1.5);
    this._jitter.set(voice || "", Math.min(MAX_JITTER_S, Math.max(JITTER_FLOOR_S, next)));
  }

  // --- sockets ---------------------------------------------------------------------------

  async _socketUrl(path, query = {}) {
    const params = new URLSearchParams(query);
    if (this._apiKey) params.set("api_key", this._apiKey);
    if (this._ticket) {
      const ticket = typeof this._ticket === "function" ? await this._ticket() : this._ticket;
      params.set("ticket", ticket);
    }
    const search = params.toString();
    return `${this._base}${path}${search ? "?" + search : ""}`;
  }

  _openInput() {
    if (this._inputOpen) return this._inputOpen;
    this._inputOpen = (async () => {
      const ws = new WebSocket(await this._socketUrl("/ws/input"));
      this._input = ws;
      // Open once the handler greeted with the id of the connection's first task (the first
      // line then listens on it while its speak is on the way).
      await new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, GREETING_TIMEOUT_MS);
        ws.onmessage = (event) => {
          this._onInput(event);
          clearTimeout(timer);
          resolve();
        };
        ws.onclose = (event) => {
          clearTimeout(timer);
          reject(closeError(event, "input") || new AIVTuberError("connection_lost", "input closed"));
        };
      });
      ws.onmessage = (event) => this._onInput(event);
      ws.onclose = (event) => this._onInputClosed(ws, event);
      return ws;
    })();
    this._inputOpen.catch((error) => {
      this._inputOpen = null;
      this._input = null;
      this._emitError(error);
    });
    return this._inputOpen;
  }

  _onInput(event) {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return this._emitError(new AIVTuberError("invalid_json", "the input handler sent bad JSON"));
    }
    if (message.type === "system") {
      if (message.action === "task_id_assigned") this._assigned = message.task_id;
      else if (message.action === "upload_processed") {
        this._settleReply(message.request_id, message);
        // The id the next speak will get, if no other speak is on its way (that one takes it):
        // the next line listens on it while its speak travels, as the first line does.
        this._assigned = this._replies.size === 0 ? message.next_task_id || null : null;
      }
      else if (message.action === "voices") {
        if (this._voicesWaiter) this._noteRtt(this._voicesWaiter.sentAt);
        this._settleVoices(message.voices || []);
      }
      return;
    }
    if (message.type !== "error") return;
    if (message.request_id && this._replies.has(message.request_id)) {
      this._settleReply(message.request_id, null, new AIVTuberError(message.code, message.message));
    } else if (this._voicesWaiter && message.code === "unknown_type") {
      this._settleVoices([]); // a gateway without list_voices: the default voice only
    } else if (message.code !== "task_not_running") {
      // task_not_running answers a cancel that came after the task ended: nothing to tell.
      const error = new AIVTuberError(message.code, message.message);
      if (message.retry_after_ms !== undefined) error.retryAfterMs = message.retry_after_ms;
      // The stream took no more text (ended by idle time, or gone): later appends throw.
      const line = this._lines.find((l) => l.streaming && l.taskId === message.task_id);
      if (line && (message.code === "task_ended" || message.code === "task_not_found")) line.inputEnded = true;
      this._emitError(error, message.task_id);
    }
  }

  _onInputClosed(ws, event) {
    if (this._input !== ws) return;
    this._input = null;
    this._inputOpen = null;
    this._assigned = null;
    const error = closeError(event, "input") || new AIVTuberError("connection_lost", "input closed");
    const waiting = this._replies.size > 0;
    for (const id of [...this._replies.keys()]) this._settleReply(id, null, error);
    this._settleVoices([]);
    // A stream still being written has lost the way to send its text: the gateway ends it
    // and speaks what it got; append() now throws this error.
    for (const line of this._lines) {
      if (line.streaming && !line.inputEnded && line.isAccepted) {
        line.inputEnded = true;
        line.inputLost = error;
      }
    }
    // An idle socket the gateway let go is reopened by the next speak(); a refusal of this
    // client (credential, origin, limit) or a loss with a request pending is worth an event.
    if (waiting || CLOSE_CODES[event.code]) this._emitError(error); // once: see fail()
  }

  _awaitReply(requestId) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this._settleReply(requestId, null, new AIVTuberError("timeout", "no answer to speak")),
        REPLY_TIMEOUT_MS,
      );
      this._replies.set(requestId, { resolve, reject, timer });
    });
  }

  _settleReply(requestId, value, error) {
    const waiter = this._replies.get(requestId);
    if (!waiter) return;
    this._replies.delete(requestId);
    clearTimeout(waiter.timer);
    if (error) waiter.reject(error);
    else waiter.resolve(value);
  }

  _settleVoices(voices) {
    const waiter = this._voicesWaiter;
    if (!waiter) return;
    this._voicesWaiter = null;
    clearTimeout(waiter.timer);
    waiter.resolve(voices);
  }

  /** Send a message on the input socket; false when it is not open. */
  _send(message) {
    if (this._input && this._input.readyState === WebSocket.OPEN) {
      this._input.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  _sendCancel(taskId) {
    return this._send({ type: "cancel", task_id: taskId });
  }

  // --- the audio clock ---------------------------------------------------------------------

  /** The context time of the sample being heard now (what the output device plays). */
  _heardTime() {
    const ctx = this._ctx;
    if (!ctx) return 0;
    const stamp = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (stamp && stamp.contextTime > 0 && stamp.performanceTime > 0) {
      const since = (performance.now() - stamp.performanceTime) / 1000;
      return Math.min(ctx.currentTime, stamp.contextTime + Math.max(0, since));
    }
    return Math.max(0, ctx.currentTime - (ctx.outputLatency || ctx.baseLatency || 0));
  }

  /** performance.now() of the moment context time `t` is (or was) heard. */
  _perfTimeOf(t) {
    return performance.now() + (t - this._heardTime()) * 1000;
  }

  /** True when the output has been silent for the analyser's whole window. */
  _outputSilent() {
    this._analyser.getFloatTimeDomainData(this._probe);
    for (let i = 0; i < this._probe.length; i++) if (this._probe[i] !== 0) return false;
    return true;
  }

  _startTicking() {
    // requestAnimationFrame keeps events in step with what is drawn; a timer keeps the line
    // moving (and `end` coming) in a hidden tab, where animation frames stop.
    if (!this._tickTimer) this._tickTimer = setInterval(() => this._tick(), 50);
    this._requestFrame();
  }

  _requestFrame() {
    if (this._rafPending || typeof requestAnimationFrame !== "function") return;
    this._rafPending = true;
    requestAnimationFrame(() => {
      this._rafPending = false;
      this._tick();
      if (this._tickTimer) this._requestFrame();
    });
  }

  _stopTicking() {
    clearInterval(this._tickTimer);
    this._tickTimer = null;
  }

  _tick() {
    const heard = this._heardTime();
    for (const line of [...this._lines]) line.tick(heard);
    const last = this._last;
    const measuring = last && last.cancelAt !== null && last.stopLatencyMs === null;
    if (measuring) last.tick(heard);
    this._tickMouth(heard);
    if (!this._lines.length && !measuring && this._mouth.atRest) this._stopTicking();
  }

  /** Move the mouth towards what the line heard now says, and tell the rig when it moved. */
  _tickMouth(heard) {
    // The line whose audio is heard now (a queued line takes over where the one before ends).
    const line = this._lines.find(
      (l) => !l.cancelled && l.startTime !== null && heard >= l.startTime && heard < l.nextTime,
    );
    const playing = Boolean(line);
    const shape = playing && line.usesVisemes ? line.lastViseme : null;
    const target = playing ? mouthTarget(shape, line.level) : closedMouth();
    const mouth = this._mouth.update(target, heard);
    if (sameMouth(this._mouthSent, mouth)) return;
    this._mouthSent = copyMouth(mouth);
    this._emit("mouth", {
      taskId: line ? line.taskId : null,
      time: heard,
      source: !playing ? "rest" : shape ? "viseme" : "level",
      ...copyMouth(mouth),
    });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(error, taskId = null) {
    if (error.reported) return; // one event per error, however many waiters it failed
    error.reported = true;
    this._emit("error", {
      code: error.code || "client_error",
      message: error.message,
      closeCode: error.closeCode ?? null,
      taskId,
      retryAfterMs: error.retryAfterMs ?? null, // rate_limited: the piece was dropped
    });
  }
}

/** What stream() returns: a line whose text is written while it is spoken. */
export class LineStream {
  constructor(line) {
    this._line = line;
  }

  /** The task's id once the gateway accepted it (null before). */
  get taskId() {
    return this._line.isAccepted ? this._line.taskId : null;
  }

  /** Everything appended so far. */
  get text() {
    return this._line.text;
  }

  /** The `end` detail's Promise (resolves once everything was heard). */
  get done() {
    return this._line.done;
  }

  /** Add text exactly as written (a piece may split a word); sent at once. */
  append(text) {
    this._line.append(String(text), false);
    return this;
  }

  /** Speak what was written so far now, at a clause boundary or not. */
  flush() {
    this._line.append("", true);
    return this;
  }

  /** No more text: resolves with the `end` detail once the rest has been heard. */
  end() {
    this._line.endInput();
    return this._line.done;
  }

  /**
   * Stop this line now (a line queued after it then plays); resolves with {heardText,
   * heardMs}, what the listener heard of it.
   */
  cancel() {
    return Promise.resolve(this._line.cancel());
  }
}

/** One spoken line: its output socket(s), its schedule on the audio clock, its counters. */
class Line {
  constructor(client, text, { voice, streaming, after }) {
    this.client = client;
    this.text = text; // everything sent so far (a stream's pieces joined)
    this.voice = voice;
    this.streaming = streaming;
    this.after = after; // the line this one plays after (queue: true), or null
    if (after) after.next = this;
    this.next = null;
    this.startedAt = performance.now(); // when speak() / stream() was called
    this.state = after ? "queued" : "connecting";
    this.taskId = null;
    this.sampleRate = null;
    this.received = 0; // frames received, = the next chunk id expected
    this.played = 0; // frames the audio clock has gone past
    this.totalChunks = null; // from audio_complete
    this.underruns = 0;
    this.resumes = 0;
    this.failedAttempts = 0; // reconnects in a row that got no message
    this.duplicates = 0;
    this.ttfaMs = null; // speak() -> first sample heard, by the audio clock
    this.ttfaAudibleMs = null; // speak() -> first sample above -40 dBFS heard
    this.firstFrameMs = null; // speak() -> first frame arrived
    this.level = 0;
    this.lastViseme = null;
    this.usesVisemes = false;
    this.wordsHeard = []; // words whose first sample was heard, in order
    this.heardChars = 0; // the text up to the end of the last word heard, found in order
    this.cancelled = false;
    this.cancelAt = null; // context time of cancel()
    this.stopLatencyMs = null; // cancel() -> output silent, by the audio clock
    this.error = null;
    this.finished = false;
    this.jitterS = null; // the jitter buffer this line started with
    this.startTime = null; // context time of the first sample
    this.audibleTime = null; // context time of the first audible sample
    this.nextTime = 0; // context time where the next frame goes
    this.firstArrival = null; // context time the first frame arrived
    this.lateS = 0; // worst arrival lateness versus real time
    this.events = []; // [time, kind, payload] in time order, fired by tick()
    this.fired = 0;
    this.spans = []; // [start, end, audio ms before it] of each scheduled frame
    this.audioMs = 0; // audio scheduled so far
    this.held = []; // [meta, pcm] waiting for the line before this one to be scheduled
    this.sources = new Set();
    this.socket = null;
    this.meta = null; // the audio_chunk waiting for its binary message
    this.completed = null; // the audio_complete message
    this.pending = []; // a stream's text messages waiting for the task id
    this.inputEnded = !streaming; // end() was called (a plain line's text is complete)
    this.isAccepted = false; // the speak was answered with this line's task id
    this.allScheduled = false; // every frame is on the audio clock (audio_complete came)
    this.sawWords = false; // the stream carries word timing
    this.trimSilence = client.trimSilence; // leave out the line's leading silence
    this.trimming = false; // still before the first audible sample
    this.trimmedS = 0; // leading silence left out
    this.done = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.done.catch(() => {}); // the caller may not await it; errors go out as events too
  }

  /** Frames of this line wait until the line before it has all of its frames scheduled. */
  get waiting() {
    const after = this.after;
    return Boolean(after && !after.finished && !after.cancelled && !after.allScheduled);
  }

  listen(taskId) {
    if (this.finished || this.taskId === taskId) return;
    if (this.socket) this._closeSocket();
    this.taskId = taskId;
    this._connect();
  }

  // --- a stream's text ---------------------------------------------------------------------

  append(text, flush) {
    if (this.inputLost) throw this.inputLost;
    if (this.inputEnded) throw new AIVTuberError("task_ended", "this line takes no more text");
    if (this.finished) return;
    this.text += text;
    const message = { type: "append", task_id: null, text };
    if (flush) message.flush = true;
    this._sendText(message);
  }

  endInput() {
    if (this.inputEnded || this.finished) return;
    this.inputEnded = true;
    try {
      this._sendText({ type: "end", task_id: null });
    } catch {
      // The input socket just closed: the gateway ends the stream itself and speaks the rest.
    }
  }

  /** The text appended before the speak went out (it carries it); a flush among it waits. */
  takeEarlyText() {
    let text = "";
    let flush = false;
    const rest = [];
    for (const message of this.pending) {
      if (message.type === "append" && !rest.length) {
        text += message.text;
        flush = flush || Boolean(message.flush);
      } else rest.push(message);
    }
    this.pending = flush ? [{ type: "append", task_id: null, text: "", flush: true }, ...rest] : rest;
    return text;
  }

  /** The speak was accepted (the task id is known): send the text written meanwhile. */
  accepted() {
    this.isAccepted = true;
    const pending = this.pending;
    this.pending = [];
    for (const message of pending) this._sendText(message);
  }

  _sendText(message) {
    // Until the speak is answered the task id is not this line's to use (listen() may have
    // run with the connection's assigned id, which a refused speak leaves unused).
    if (!this.isAccepted) return this.pending.push(message);
    if (!this.client._send({ ...message, task_id: this.taskId })) {
      this.inputEnded = true;
      this.inputLost = new AIVTuberError("connection_lost", "the input socket is closed");
      throw this.inputLost;
    }
  }

  // --- the output socket -------------------------------------------------------------------

  async _connect() {
    const client = this.client;
    const query = this.received > 0 ? { from_chunk: String(this.received) } : {};
    let url;
    try {
      url = await client._socketUrl(`/ws/output/${this.taskId}`, query);
    } catch (error) {
      return this.fail(new AIVTuberError("ticket_failed", `no ticket: ${error.message || error}`));
    }
    if (this.finished) return;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    this.meta = null;
    ws.onmessage = (event) => {
      if (this.socket !== ws) return;
      this.failedAttempts = 0; // this socket works: a later drop gets a fresh set of tries
      this._onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this.socket === ws) this._onClose(event);
    };
  }

  _closeSocket(code = 1000, reason = "done") {
    const ws = this.socket;
    this.socket = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
  }

  /** Test hook and the model of a network drop: close the output socket, then resume. */
  dropOutput() {
    if (this.socket) this.socket.close(4000, "dropped by the page");
  }

  _onClose(event) {
    this.socket = null;
    if (this.finished || this.completed) return;
    if (this.serverError) return this.fail(this.serverError);
    if (FATAL_OUTPUT_CLOSES.has(event.code)) return this.fail(closeError(event, "output"));
    const attempt = this.failedAttempts;
    if (attempt >= RESUME_ATTEMPTS) {
      return this.fail(closeError(event, "output") || new AIVTuberError("connection_lost", "output closed"));
    }
    // A drop mid-line: come back where we stopped, ?from_chunk=<next id>, no gap, no repeat.
    this.resumes += 1;
    this.failedAttempts += 1;
    const delay = attempt === 0 ? 0 : RESUME_BASE_DELAY_MS * 2 ** (attempt - 1);
    setTimeout(() => {
      if (!this.finished) this._connect();
    }, delay);
  }

  _onMessage(data) {
    if (typeof data !== "string") return this._onFrame(data);
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return this.fail(new AIVTuberError("invalid_json", "the output handler sent bad JSON"));
    }
    switch (message.type) {
      case "audio_start":
        if (this.sampleRate === null) {
          this.sampleRate = message.sample_rate;
          this.voiceName = message.voice;
          this.engine = message.engine;
          if (this.state === "connecting") this.state = "buffering";
        }
        break;
      case "audio_chunk":
        this.meta = message;
        break;
      case "audio_complete":
        this.completed = message;
        this.totalChunks = message.chunks;
        if (message.cancelled) this.cancelled = true;
        this._closeSocket();
        if (this.cancelled) this._finish();
        else if (this.received < message.chunks) {
          this.fail(new AIVTuberError("frame_lost", `stream ended at ${this.received} of ${message.chunks} frames`));
        } else if (!this.waiting) this._scheduled();
        break;
      case "error":
        this.serverError = new AIVTuberError(message.code, message.error || message.message);
        break;
    }
  }

  _onFrame(buffer) {
    const meta = this.meta;
    this.meta = null;
    if (!meta || this.cancelled || this.finished) return;
    if (meta.chunk_id < this.received) {
      this.duplicates += 1; // already have it (never expected after a from_chunk resume)
      return;
    }
    if (meta.chunk_id > this.received) {
      this.serverError = new AIVTuberError("frame_lost", `frame ${this.received} missing, got ${meta.chunk_id}`);
      return this._closeSocket(4000, "frame missing");
    }
    this.received += 1;
    if (this.firstFrameMs === null) this.firstFrameMs = Math.round(performance.now() - this.startedAt);
    this.client._emit("chunk", {
      taskId: this.taskId, chunkId: meta.chunk_id, samples: meta.samples, level: meta.level, pcm: buffer,
    });
    const pcm = new Int16Array(buffer, 0, buffer.byteLength >> 1);
    if (this.waiting) this.held.push([meta, pcm]);
    else this._schedule(meta, pcm);
  }

  /** The line before this one has all its frames on the clock: this one follows it. */
  release() {
    const held = this.held;
    this.held = [];
    for (const [meta, pcm] of held) if (!this.finished && !this.cancelled) this._schedule(meta, pcm);
    if (this.completed && !this.finished && !this.cancelled) this._scheduled();
  }

  /** Every frame of this line is on the audio clock: a queued line may follow now. */
  _scheduled() {
    this.allScheduled = true;
    if (this.next) this.next.release();
  }

  _schedule(meta, pcm) {
    const client = this.client;
    const ctx = client.audioContext;
    const rate = this.sampleRate;
    const now = ctx.currentTime;
    const quantum = 128 / ctx.sampleRate;
    if (this.startTime === null) {
      this.jitterS = client._jitterFor(this.voice);
      this.firstArrival = now;
      this.startTime = now + quantum + this.jitterS;
      // Right after the line before it, when that one is still to be heard: no gap.
      const before = this.after;
      if (before && !before.cancelled && !before.error && before.nextTime > now + quantum) {
        this.startTime = before.nextTime;
        this.firstArrival = this.startTime - quantum - this.jitterS;
      }
      this.nextTime = this.startTime;
      this.trimming = this.trimSilence && this.startTime !== before?.nextTime;
      this.state = "buffering"; // "playing" once the audio clock reaches the first sample
    } else {
      // How late this frame came compared with a real-time stream starting with frame 0.
      const due = this.firstArrival + (this.nextTime - this.startTime);
      this.lateS = Math.max(this.lateS, now - due);
      if (this.nextTime <= now + quantum) {
        // Ran dry: the output went silent before this frame came. Buffer again.
        this.underruns += 1;
        this.nextTime = now + quantum + client._jitterFor(this.voice);
      }
    }
    const frameMs = (pcm.length / rate) * 1000;
    const skip = this._leadingSilence(pcm, rate);
    const at = this.nextTime - skip / rate; // where the frame's sample 0 would have played
    const events = [[at, "level", meta]];
    for (const [offsetMs, shape] of meta.visemes || []) {
      events.push([at + offsetMs / 1000, "viseme", { chunkId: meta.chunk_id, shape }]);
    }
    if (meta.words) this.sawWords = true;
    for (const [offsetMs, durationMs, word] of meta.words || []) {
      events.push([at + offsetMs / 1000, "word", { chunkId: meta.chunk_id, word, durationMs }]);
    }
    // Offsets within a frame are in order, but a frame's visemes and words interleave; what
    // fell in skipped silence fires as the frame starts.
    events.sort((a, b) => a[0] - b[0]);
    for (const event of events) event[0] = Math.max(event[0], this.nextTime);
    this.events.push(...events);
    const kept = pcm.length - skip;
    this.spans.push([this.nextTime, this.nextTime + kept / rate, this.audioMs + (skip / rate) * 1000]);
    this.audioMs += frameMs;
    if (kept === 0) return;
    const buffer = ctx.createBuffer(1, kept, rate);
    const channel = buffer.getChannelData(0);
    let firstAudible = -1;
    for (let i = 0; i < kept; i++) {
      const sample = pcm[skip + i] / 32768;
      channel[i] = sample;
      if (firstAudible < 0 && (sample > AUDIBLE || sample < -AUDIBLE)) firstAudible = i;
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(client._out);
    source.onended = () => this.sources.delete(source);
    source.start(this.nextTime);
    this.sources.add(source);
    if (this.audibleTime === null && firstAudible >= 0) this.audibleTime = this.nextTime + firstAudible / rate;
    this.nextTime += kept / rate;
  }

  /**
   * How many samples of silence at the very start of a line to leave out: nobody hears them,
   * and the first sound comes that much sooner. Only before the line's first audible sample,
   * at most MAX_TRIM_S, keeping TRIM_PREROLL_S before the sound; never for a line that
   * follows another one (its pause is part of the speech).
   */
  _leadingSilence(pcm, rate) {
    if (!this.trimming) return 0;
    let first = -1;
    for (let i = 0; i < pcm.length; i++) {
      if (pcm[i] > AUDIBLE_S16 || pcm[i] < -AUDIBLE_S16) {
        first = i;
        break;
      }
    }
    const budget = Math.max(0, Math.floor((MAX_TRIM_S - this.trimmedS) * rate));
    let skip = first < 0 ? pcm.length : Math.max(0, first - Math.round(TRIM_PREROLL_S * rate));
    if (skip > budget) skip = budget;
    if (first >= 0 || skip < pcm.length) this.trimming = false;
    this.trimmedS += skip / rate;
    return skip;
  }

  /** Milliseconds of this line's audio heard by context time `heard` (gaps not counted). */
  heardMs(heard) {
    let ms = 0;
    for (const [start, end, before] of this.spans) {
      if (heard < start) break;
      ms = before + (Math.min(heard, end) - start) * 1000;
    }
    return Math.round(ms);
  }

  /**
   * The text up to the end of the last word heard, as it was sent: words are found in the
   * text in order (a word not found is skipped). null when audio was heard but the voice
   * sends no word timing.
   */
  heardText(heardMs) {
    if (!this.wordsHeard.length) return this.sawWords || heardMs === 0 ? "" : null;
    return this.text.slice(0, this.heardChars);
  }

  /** Fire what the audio clock has reached; finish once everything was heard. */
  tick(heard) {
    const client = this.client;
    if (this.cancelAt !== null && this.stopLatencyMs === null && client._outputSilent()) {
      this.stopLatencyMs = Math.round((client.audioContext.currentTime - this.cancelAt) * 1000);
    }
    // Cancelled: silent now, so nothing more is heard while the server confirms.
    if (this.finished || this.cancelled) return;
    if (this.startTime !== null && this.ttfaMs === null && heard >= this.startTime) {
      this.ttfaMs = Math.round(client._perfTimeOf(this.startTime) - this.startedAt);
      if (this.state === "buffering") this.state = "playing";
      client._emit("start", {
        taskId: this.taskId, sampleRate: this.sampleRate, voice: this.voiceName, engine: this.engine,
        ttfaMs: this.ttfaMs, time: this.startTime,
      });
    }
    if (this.audibleTime !== null && this.ttfaAudibleMs === null && heard >= this.audibleTime) {
      this.ttfaAudibleMs = Math.round(client._perfTimeOf(this.audibleTime) - this.startedAt);
    }
    while (this.fired < this.events.length && this.events[this.fired][0] <= heard) {
      const [, kind, payload] = this.events[this.fired++];
      if (kind === "level") {
        this.level = payload.level;
        client._emit("level", { taskId: this.taskId, chunkId: payload.chunk_id, level: payload.level });
      } else if (kind === "viseme") {
        this.lastViseme = payload.shape;
        this.usesVisemes = true;
        client._emit("viseme", {
          taskId: this.taskId, chunkId: payload.chunkId, shape: payload.shape,
          openness: VISEME_OPENNESS[payload.shape] ?? 0.5,
        });
      } else {
        this.wordsHeard.push(payload.word);
        const at = this.text.indexOf(payload.word, this.heardChars);
        if (at >= 0) this.heardChars = at + payload.word.length;
        client._emit("word", {
          taskId: this.taskId, chunkId: payload.chunkId, word: payload.word,
          index: this.wordsHeard.length - 1, durationMs: payload.durationMs,
          heardText: this.text.slice(0, this.heardChars), text: this.text,
        });
      }
    }
    while (this.played < this.spans.length && this.spans[this.played][1] <= heard) {
      this.played += 1;
    }
    if (this.completed && !this.waiting && this.held.length === 0 && this.played >= this.completed.chunks) {
      this._finish();
    }
  }

  /** Stop now (silence, cancel on the server); returns {heardText, heardMs}. */
  cancel() {
    const client = this.client;
    const ctx = client.audioContext;
    const heardMs = this.heardMs(client._heardTime());
    const what = { heardText: this.heardText(heardMs), heardMs };
    if (this.finished) return what;
    this.heard = what;
    this.cancelled = true;
    this.cancelAt = ctx.currentTime;
    this._silence();
    this.held = [];
    if (this.next) this.next.release(); // a line queued after this one plays now
    if (this.completed || !this.taskId || !client._sendCancel(this.taskId)) {
      this._finish();
      return what;
    }
    // Keep reading the stream for its audio_complete "cancelled": true, but not forever.
    this.state = "cancelling";
    setTimeout(() => this._finish(), CANCEL_CONFIRM_MS);
    return what;
  }

  _silence() {
    const ctx = this.client.audioContext;
    for (const source of this.sources) {
      source.onended = null;
      source.stop(ctx.currentTime);
      source.disconnect();
    }
    this.sources.clear();
  }

  fail(error) {
    if (this.finished) return;
    this.error = error;
    this._silence();
    this._closeSocket();
    this.finished = true;
    this.state = "error";
    this.level = 0;
    this.client._removeLine(this);
    this.client._emitError(error, this.taskId);
    this._reject(error);
    if (this.next) this.next.release();
  }

  _finish() {
    if (this.finished) return;
    this.finished = true;
    this._closeSocket();
    this.state = this.cancelled ? "cancelled" : "done";
    this.level = 0;
    const client = this.client;
    client._removeLine(this);
    // Frames of a queued line or a stream came as fast as they were let out or written:
    // their lateness says nothing about the connection.
    if (!this.cancelled && !this.streaming && !this.after && this.jitterS !== null) {
      client._learnLateness(this.voice, this.jitterS, this.lateS, this.underruns > 0);
    }
    const heard = this.heard ?? { heardText: this.text, heardMs: Math.round(this.audioMs) };
    const detail = {
      taskId: this.taskId, chunks: this.totalChunks ?? this.received, cancelled: this.cancelled,
      // the server's audio_complete said "cancelled": true (not just stopped here)
      serverCancelled: Boolean(this.completed && this.completed.cancelled),
      reason: this.completed?.reason ?? null,
      underruns: this.underruns, resumes: this.resumes, ttfaMs: this.ttfaMs,
      time: this.startTime === null ? null : this.nextTime,
      ...heard,
    };
    client._emit("level", { taskId: this.taskId, chunkId: null, level: 0 });
    client._emit("end", detail);
    this._resolve(detail);
    if (this.next) this.next.release();
  }
}

export default AIVTuberClient;
