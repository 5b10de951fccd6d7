// aivtuber.js: the reference browser client of the AIVtuber Gateway.
//
// A dependency-free ES module (served by the gateway at /static/aivtuber.js). It speaks a line
// through /ws/input, streams its PCM from /ws/output/<task_id> and plays it gaplessly with
// AudioBufferSourceNodes scheduled back to back on the AudioContext's clock, at the stream's
// own sample rate (Web Audio resamples each buffer to the context's rate). A jitter buffer,
// sized from how late frames arrived compared with real time, delays the first sample just
// enough. Everything a rig binds to (level, viseme, start, end) fires when the audio clock
// reaches that sample as heard at the output, not when the frame arrived.
//
//   import { AIVTuberClient } from "/static/aivtuber.js";
//   const client = new AIVTuberClient();               // same origin; {url, api_key, ticket}
//   client.on("viseme", (e) => rig.setMouth(e.detail.shape));
//   await client.speak("Hi chat!");                     // resolves when the line has been heard
//
// Events (CustomEvent, data in event.detail): start {taskId, sampleRate, voice, engine, ttfaMs},
// level {taskId, chunkId, level}, viseme {taskId, chunkId, shape, openness}, chunk {taskId,
// chunkId, samples, level, pcm} (on arrival, before playback), end {taskId, chunks, cancelled,
// underruns, resumes}, error {code, message, closeCode, taskId}.

/** How far each viseme shape opens the mouth (0..1): a starting point for rigs. */
export const VISEME_OPENNESS = Object.freeze({ a: 1.0, o: 0.8, e: 0.65, u: 0.5, i: 0.45, n: 0.08 });

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

const MIN_JITTER_S = 0.05; // never start with less buffered than this (scheduling safety)
const MAX_JITTER_S = 2.0; // never hold back more than this, however late frames came
const FIRST_JITTER_S = 0.1; // before anything was measured
const JITTER_MARGIN_S = 0.02; // above the worst lateness measured
const JITTER_DECAY = 0.8; // per line: how fast a large estimate shrinks back
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

export class AIVTuberClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] gateway base URL (http(s):// or ws(s)://); default: this page's origin
   * @param {string} [options.api_key] sent as ?api_key= on every socket
   * @param {string|function(): (string|Promise<string>)} [options.ticket] a ticket, or a function
   *   returning a fresh one for each socket (tickets from POST /v1/tickets may be single use)
   * @param {string} [options.voice] default voice of speak()
   * @param {AudioContext} [options.audioContext] play through this context (else one is made)
   * @param {AudioNode} [options.destination] connect the output here (default: the speakers)
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
    this._line = null; // the line being spoken (one at a time)
    this._jitterS = FIRST_JITTER_S;
    this._requests = 0;
    this._tickTimer = null;
    this._rafPending = false;
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
    ws.send(JSON.stringify({ type: "list_voices" }));
    return waiter.promise;
  }

  /**
   * Speak a line: resolves with the `end` detail once it has been heard (or cancelled);
   * rejects with an AIVTuberError. A line still playing is cancelled first (barge-in).
   */
  async speak(text, options = {}) {
    const ctx = this.audioContext;
    if (ctx.state !== "running") await ctx.resume();
    if (this._line) this.cancel();
    const line = new Line(this, text, performance.now());
    this._line = line;
    this._startTicking();
    try {
      const ws = await this._openInput();
      if (line.finished) return line.done;
      const requestId = `r${++this._requests}`;
      const voice = options.voice || this.voice;
      const message = { type: "speak", text, request_id: requestId };
      if (voice) message.voice = voice;
      const accepted = this._awaitReply(requestId);
      // The id the handler assigned on connect goes to the next accepted line: listening on it
      // before the speak is answered saves a round trip on the first line of a connection.
      if (this._assigned) {
        line.listen(this._assigned);
        this._assigned = null;
      }
      ws.send(JSON.stringify(message));
      const reply = await accepted;
      // Cancelled while the speak was on its way: the task exists only now, cancel it now.
      if (line.cancelled) this._sendCancel(reply.task_id);
      else line.listen(reply.task_id);
    } catch (error) {
      line.fail(error);
    }
    return line.done;
  }

  /** Barge-in: silence now, cancel the task on the server, end the line as cancelled. */
  cancel() {
    const line = this._line;
    if (!line || line.finished) return;
    line.cancel();
  }

  /** Close the output socket as a network drop would (it resumes by itself): for tests. */
  dropOutput() {
    if (this._line) this._line.dropOutput();
  }

  /** Counters of the current (or last) line, for status lines and tests. */
  stats() {
    const line = this._line;
    return {
      state: line ? line.state : "idle",
      taskId: line ? line.taskId : null,
      ttfaMs: line ? line.ttfaMs : null,
      firstFrameMs: line ? line.firstFrameMs : null,
      chunksReceived: line ? line.received : 0,
      chunksPlayed: line ? line.played : 0,
      totalChunks: line ? line.totalChunks : null,
      underruns: line ? line.underruns : 0,
      bufferMs: line ? Math.max(0, Math.round((line.nextTime - this._heardTime()) * 1000)) : 0,
      jitterMs: Math.round(this._jitterS * 1000),
      resumes: line ? line.resumes : 0,
      duplicateChunks: line ? line.duplicates : 0,
      cancelled: line ? line.cancelled : false,
      stopLatencyMs: line ? line.stopLatencyMs : null,
      lastViseme: line ? line.lastViseme : null,
      level: line ? line.level : 0,
      sampleRate: line ? line.sampleRate : null,
      contextRate: this._ctx ? this._ctx.sampleRate : null,
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
      else if (message.action === "upload_processed") this._settleReply(message.request_id, message);
      else if (message.action === "voices") this._settleVoices(message.voices || []);
      return;
    }
    if (message.type !== "error") return;
    if (message.request_id && this._replies.has(message.request_id)) {
      this._settleReply(message.request_id, null, new AIVTuberError(message.code, message.message));
    } else if (this._voicesWaiter && message.code === "unknown_type") {
      this._settleVoices([]); // a gateway without list_voices: the default voice only
    } else if (message.code !== "task_not_running") {
      // task_not_running answers a cancel that came after the task ended: nothing to tell.
      this._emitError(new AIVTuberError(message.code, message.message), message.task_id);
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

  _sendCancel(taskId) {
    if (this._input && this._input.readyState === WebSocket.OPEN) {
      this._input.send(JSON.stringify({ type: "cancel", task_id: taskId }));
      return true;
    }
    return false;
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
    const line = this._line;
    if (!line) return this._stopTicking();
    line.tick(this._heardTime());
    if (line.finished && (line.cancelAt === null || line.stopLatencyMs !== null)) {
      this._stopTicking();
    }
  }

  /** Learn from a finished line how late its frames came: the next line's jitter buffer. */
  _learnLateness(lateS, underran) {
    const wanted = lateS + JITTER_MARGIN_S;
    let next = Math.max(wanted, this._jitterS * JITTER_DECAY);
    if (underran) next = Math.max(next, this._jitterS * 1.5);
    this._jitterS = Math.min(MAX_JITTER_S, Math.max(MIN_JITTER_S, next));
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
    });
  }
}

/** One spoken line: its output socket(s), its schedule on the audio clock, its counters. */
class Line {
  constructor(client, text, startedAt) {
    this.client = client;
    this.text = text;
    this.startedAt = startedAt; // performance.now() when speak() was called
    this.state = "connecting";
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
    this.firstFrameMs = null; // speak() -> first frame arrived
    this.level = 0;
    this.lastViseme = null;
    this.cancelled = false;
    this.cancelAt = null; // context time of cancel()
    this.stopLatencyMs = null; // cancel() -> output silent, by the audio clock
    this.error = null;
    this.finished = false;
    this.startTime = null; // context time of the first sample
    this.nextTime = 0; // context time where the next frame goes
    this.firstArrival = null; // context time the first frame arrived
    this.lateS = 0; // worst arrival lateness versus real time
    this.events = []; // [time, kind, payload] in time order, fired by tick()
    this.fired = 0;
    this.chunkEnds = []; // context time each frame ends
    this.sources = new Set();
    this.socket = null;
    this.meta = null; // the audio_chunk waiting for its binary message
    this.completed = null; // the audio_complete message
    this.done = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.done.catch(() => {}); // the caller may not await it; errors go out as events too
  }

  listen(taskId) {
    if (this.finished || this.taskId === taskId) return;
    if (this.socket) this._closeSocket();
    this.taskId = taskId;
    this._connect();
  }

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
          this.voice = message.voice;
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
        }
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
    const client = this.client;
    client._emit("chunk", {
      taskId: this.taskId, chunkId: meta.chunk_id, samples: meta.samples, level: meta.level, pcm: buffer,
    });
    this._schedule(meta, new Int16Array(buffer, 0, buffer.byteLength >> 1));
  }

  _schedule(meta, pcm) {
    const client = this.client;
    const ctx = client.audioContext;
    const rate = this.sampleRate;
    const now = ctx.currentTime;
    const quantum = 128 / ctx.sampleRate;
    if (this.startTime === null) {
      this.firstFrameMs = Math.round(performance.now() - this.startedAt);
      this.firstArrival = now;
      this.startTime = now + quantum + client._jitterS;
      this.nextTime = this.startTime;
      this.state = "buffering"; // "playing" once the audio clock reaches the first sample
    } else {
      // How late this frame came compared with a real-time stream starting with frame 0.
      const due = this.firstArrival + (this.nextTime - this.startTime);
      this.lateS = Math.max(this.lateS, now - due);
      if (this.nextTime <= now + quantum) {
        // Ran dry: the output went silent before this frame came. Buffer again.
        this.underruns += 1;
        client._learnLateness(this.lateS, true);
        this.nextTime = now + quantum + client._jitterS;
      }
    }
    if (pcm.length === 0) return;
    const buffer = ctx.createBuffer(1, pcm.length, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(client._out);
    source.onended = () => this.sources.delete(source);
    source.start(this.nextTime);
    this.sources.add(source);
    const at = this.nextTime;
    const end = at + pcm.length / rate;
    this.events.push([at, "level", meta]);
    for (const [offsetMs, shape] of meta.visemes || []) {
      this.events.push([at + offsetMs / 1000, "viseme", { chunkId: meta.chunk_id, shape }]);
    }
    this.chunkEnds.push(end);
    this.nextTime = end;
  }

  /** Fire what the audio clock has reached; finish once everything was heard. */
  tick(heard) {
    const client = this.client;
    if (this.cancelAt !== null && this.stopLatencyMs === null && client._outputSilent()) {
      this.stopLatencyMs = Math.round((client.audioContext.currentTime - this.cancelAt) * 1000);
    }
    if (this.finished) return;
    if (this.startTime !== null && this.ttfaMs === null && heard >= this.startTime) {
      this.ttfaMs = Math.round(client._perfTimeOf(this.startTime) - this.startedAt);
      if (this.state === "buffering") this.state = "playing";
      client._emit("start", {
        taskId: this.taskId, sampleRate: this.sampleRate, voice: this.voice, engine: this.engine,
        ttfaMs: this.ttfaMs,
      });
    }
    while (this.fired < this.events.length && this.events[this.fired][0] <= heard) {
      const [, kind, payload] = this.events[this.fired++];
      if (kind === "level") {
        this.level = payload.level;
        client._emit("level", { taskId: this.taskId, chunkId: payload.chunk_id, level: payload.level });
      } else {
        this.lastViseme = payload.shape;
        client._emit("viseme", {
          taskId: this.taskId, chunkId: payload.chunkId, shape: payload.shape,
          openness: VISEME_OPENNESS[payload.shape] ?? 0.5,
        });
      }
    }
    while (this.played < this.chunkEnds.length && this.chunkEnds[this.played] <= heard) {
      this.played += 1;
    }
    if (this.completed && this.played >= this.completed.chunks) this._finish();
  }

  cancel() {
    const client = this.client;
    const ctx = client.audioContext;
    this.cancelled = true;
    this.cancelAt = ctx.currentTime;
    this._silence();
    if (this.completed || !this.taskId || !client._sendCancel(this.taskId)) return this._finish();
    // Keep reading the stream for its audio_complete "cancelled": true, but not forever.
    this.state = "cancelling";
    setTimeout(() => this._finish(), CANCEL_CONFIRM_MS);
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
    this.client._emitError(error, this.taskId);
    this._reject(error);
  }

  _finish() {
    if (this.finished) return;
    this.finished = true;
    this._closeSocket();
    this.state = this.cancelled ? "cancelled" : "done";
    this.level = 0;
    const client = this.client;
    if (!this.cancelled) client._learnLateness(this.lateS, this.underruns > 0);
    const detail = {
      taskId: this.taskId, chunks: this.totalChunks ?? this.received, cancelled: this.cancelled,
      // the server's audio_complete said "cancelled": true (not just stopped here)
      serverCancelled: Boolean(this.completed && this.completed.cancelled),
      underruns: this.underruns, resumes: this.resumes, ttfaMs: this.ttfaMs,
    };
    client._emit("level", { taskId: this.taskId, chunkId: null, level: 0 });
    client._emit("end", detail);
    this._resolve(detail);
  }
}

export default AIVTuberClient;
