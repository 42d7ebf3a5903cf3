// broker-client.mjs: the browser (and mini-program) client of trio-broker.
// One ES module, no dependencies. Wire contract: docs/PROTOCOL.md of the broker.
//
// - Token in the first `auth` frame by default (never in a URL); getToken() on every attempt,
//   and again when the broker announces `token_expiring`: the new token goes on the open
//   connection (in-band refresh). After a 4005 (token expired) it reconnects at once with a
//   fresh token; without getToken, 4005 stops it.
// - Reconnects with exponential backoff and full jitter, decided per close code by CLOSE_CODES.
// - Jobs resume with lastSeq (and lastEpoch when the broker offers epochs): every event is
//   seen at most once, in order; a gap refetches the latest status.
// - Chat sends carry a clientMsgId, wait in an outbox while reconnecting, and resolve with
//   the broker's chat_ack (the broker drops a retried duplicate).
// - Transports: WebSocket first; when it cannot open (fallbackAfter failures, or at once when
//   the broker answers plain HTTP on the WebSocket path: the upgrade never reached it) the
//   same client goes on over SSE + POST (sse-socket.mjs), and tries WebSocket again every
//   websocketRetryInterval. Only `transport` tells the page which one it is on. The SSE
//   module is imported only then (where fetch can stream: not in mini-programs).

// What the client does after each close code: [action, meaning]. Actions: "stop" (stay
// disconnected until connect() is called), "retry" (backoff), "wait" (a longer backoff).
// 4005 (token expired) is retried at once, with a token from getToken(); a client without
// getToken stops (its lastClose says "stop").
export const CLOSE_CODES = {
  1000: ["stop", "normal close"],
  1001: ["retry", "server shutting down or restarting"],
  1002: ["stop", "WebSocket protocol violation (a client bug)"],
  1005: ["retry", "closed without a code"],
  1006: ["retry", "connection lost"],
  1007: ["stop", "a text frame that is not UTF-8 (a client bug)"],
  1008: ["stop", "authentication failed or policy violation: a new token is needed"],
  1009: ["stop", "message larger than the server's limit"],
  1011: ["retry", "server internal error"],
  1013: ["retry", "try again later: the node cannot take the login now"],
  4000: ["retry", "dropped by this client (heartbeat watchdog, drop() or offline)"],
  4001: ["stop", "replaced by a newer login of the same user"],
  4002: ["retry", "heartbeat timeout"],
  4003: ["retry", "slow consumer: resuming with lastSeq"],
  4004: ["retry", "upstream unavailable"],
  4005: ["retry", "token expired: get a new token, then reconnect"],
  4008: ["wait", "rate limit exceeded repeatedly: reconnecting after a longer backoff"],
  4009: ["stop", "disconnected by the application (its server API): not reconnecting by itself"],
};

/** {code, action, meaning} for a close code; unknown codes are retried. */
export function explainClose(code) {
  const [action, meaning] = CLOSE_CODES[code] || ["retry", "unexpected close code"];
  return { code, action, meaning };
}

const OPEN = 1;
/** A seq as the broker sends them: a non-negative integer. */
const validSeq = (seq) => Number.isSafeInteger(seq) && seq >= 0;

const JOB_EVENT = { job_status: "onJobStatusUpdate", stage_completed: "onStageCompleted", job_error: "onJobError" };
let counter = 0;
const newId = () =>
  globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : Date.now().toString(36) + "-" + (++counter) + "-" + Math.random().toString(36).slice(2);

export class BrokerClient {
  /**
   * @param {string} url  ws:// or wss:// URL of the broker's WebSocket path
   * @param {object} [options]  see broker-client.d.ts
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      auth: "frame", minDelay: 500, maxDelay: 30000, maxAttempts: Infinity,
      rateLimitDelay: 15000, maxOutbox: 32, lifecycle: true, transports: ["websocket", "sse"],
      fallbackAfter: 2, websocketRetryInterval: 300000, stableAfter: 10000, joinBurst: 20, joinRate: 10,
      ...options,
    };
    this._joinQueue = []; // jobs whose join waits for the client's own join budget (see _queueJoin)
    this._joinTokens = this.options.joinBurst;
    this._joinTimer = null;
    this._stable = null; // the timer after which a connection counts as stable (the backoff resets)
    this._level = 0; // the backoff's exponent: attempts since the last connection that held
    this.transport = this.options.transports[0] || "websocket";
    this._wsFailures = 0; // WebSocket attempts in a row that never opened
    this._probe = null; // the timer that tries WebSocket again while on SSE
    this.status = "disconnected";
    this.attempts = 0;
    this.nextAttemptAt = null;
    this.lastClose = null;
    this.userId = null;
    this.tokenExpiresAt = null; // ISO time the current token expires (from token_expiring / token_refreshed)
    this.refreshes = 0;
    this.online = true;
    this.visible = true;
    this.jobs = new Map();
    this._listeners = {};
    this._outbox = new Map(); // clientMsgId -> {frame, resolve, reject}
    this._history = new Map(); // conversationId -> [resolve, reject][]
    this._seenChat = new Map(); // conversationId -> highest msgId seen
    this._ws = null;
    this._closedUnopened = 0; // closes with 1006 before the socket opened, in a row
    this._timer = null;
    this._watchdog = null;
    this._stopped = true;
    const doc = globalThis.document, win = globalThis.window;
    if (this.options.lifecycle && doc && win && win.addEventListener) {
      this.visible = doc.visibilityState !== "hidden";
      doc.addEventListener("visibilitychange", () => this.setVisible(doc.visibilityState !== "hidden"));
      win.addEventListener("online", () => this.setOnline(true));
      win.addEventListener("offline", () => this.setOnline(false));
    }
  }

  /** Subscribe to an event; returns the function that unsubscribes. */
  on(type, listener) {
    (this._listeners[type] ||= new Set()).add(listener);
    return () => this._listeners[type].delete(listener);
  }

  _emit(type, value) {
    for (const listener of this._listeners[type] || []) {
      try { listener(value); } catch (error) { console.error(error); }
    }
  }

  get connected() { return this.status === "connected"; }

  /** Milliseconds until the next reconnect attempt, or null. */
  get nextAttemptIn() { return this.nextAttemptAt === null ? null : Math.max(0, this.nextAttemptAt - Date.now()); }

  /** Start (or restart after a stop or disconnect()). Returns at once; watch "status". */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this.attempts = 0;
    this._setStatus("connecting");
    this._attempt();
  }

  /** Close and stay disconnected until connect(); pending chat sends are rejected. */
  disconnect() {
    this._stop("disconnected", new Error("disconnected"));
  }

  /** Drop the socket as a network failure would: the client reconnects and resumes. */
  drop() {
    if (this._ws) this._ws.close(4000, "dropped");
  }

  /** Network state (browsers: the window's online/offline events; wx: the adapter). */
  setOnline(online) {
    if (online === this.online) return;
    this.online = online;
    this._emit(online ? "online" : "offline");
    if (this._stopped) return;
    if (!online) {
      clearTimeout(this._timer);
      this.nextAttemptAt = null;
      if (this._ws) this._ws.close(4000, "offline");
      else this._setStatus("reconnecting");
    } else if (!this._ws) {
      this._retryNow();
    }
  }

  /** Page visibility: no attempts while hidden; an immediate one when shown again. */
  setVisible(visible) {
    this.visible = visible;
    if (visible && !this._stopped && !this._ws && this.online && this.nextAttemptAt !== null) this._retryNow();
  }

  /** Send any JSON message now; false when not connected. */
  send(message) {
    if (!this._ws || this._ws.readyState !== OPEN || this.status !== "connected") return false;
    const text = JSON.stringify(message);
    this._ws.send(text);
    this._emit("frame", { dir: "out", data: text, time: Date.now() });
    return true;
  }

  // -- jobs ---------------------------------------------------------------

  /** Join a job and keep joined across reconnects; returns {leave()}. Several joins of
   *  one job share its state: each handler set sees each event once. */
  joinJob(jobId, handlers = {}, { lastSeq } = {}) {
    let job = this.jobs.get(jobId);
    if (!job) {
      job = { id: jobId, handlers: new Set(), lastSeq, epoch: undefined, joining: true, gap: false };
      this.jobs.set(jobId, job);
      if (this.status === "connected") this._queueJoin(job);
    }
    job.handlers.add(handlers);
    return { leave: () => this.leaveJob(jobId, handlers) };
  }

  /** Stop the handlers' subscription (all of the job's, without handlers). */
  leaveJob(jobId, handlers) {
    const job = this.jobs.get(jobId);
    if (!job) return;
    if (handlers) {
      job.handlers.delete(handlers);
      if (job.handlers.size) return;
    }
    this.jobs.delete(jobId);
    this.send({ type: "leave_job", jobId });
  }

  _call(job, name, ...args) {
    for (const handlers of job.handlers) {
      try { if (handlers[name]) handlers[name](...args); } catch (error) { console.error(error); }
    }
  }

  /** Joins are paced by the client's own token bucket (joinBurst at once, then joinRate per
   * second), below the broker's message rate limit: a page with many jobs is never
   * refused RATE_LIMITED (and closed 4008) for rejoining them all after a reconnect. */
  _queueJoin(job) {
    if (!this._joinQueue.includes(job)) this._joinQueue.push(job);
    this._drainJoins();
  }

  _drainJoins() {
    const { joinBurst, joinRate } = this.options;
    const now = Date.now();
    this._joinTokens = Math.min(joinBurst, this._joinTokens + ((now - (this._joinStamp || now)) / 1000) * joinRate);
    this._joinStamp = now;
    while (this._joinQueue.length && this._joinTokens >= 1 && this.status === "connected") {
      const job = this._joinQueue.shift();
      if (this.jobs.get(job.id) !== job) continue; // left meanwhile
      this._joinTokens -= 1;
      this._sendJoin(job);
    }
    clearTimeout(this._joinTimer);
    this._joinTimer = this._joinQueue.length && this.status === "connected"
      ? setTimeout(() => this._drainJoins(), Math.ceil(1000 / joinRate)) : null;
  }

  _sendJoin(job) {
    const message = { type: "join_job", jobId: job.id };
    if (job.lastSeq !== undefined) {
      message.lastSeq = job.lastSeq;
      if (job.epoch !== undefined) message.lastEpoch = job.epoch;
    }
    job.joining = true;
    job.gap = false;
    this.send(message);
  }

  _jobEvent(job, message) {
    const { seq } = message;
    if (!validSeq(seq)) return; // a seq the broker never sends: not an event of this job's order
    if (job.lastSeq !== undefined && !job.gap) {
      if (seq <= job.lastSeq) return; // seen already
      if (seq > job.lastSeq + 1) {
        // a hole: stale frames before the replay, or events lost: rejoin and let the broker replay
        if (!job.joining) this._sendJoin(job);
        return;
      }
    }
    job.lastSeq = seq;
    job.gap = false;
    if (message.epoch !== undefined) job.epoch = message.epoch;
    if (JOB_EVENT[message.type]) this._call(job, JOB_EVENT[message.type], message.data, message);
    this._call(job, "onEvent", message);
  }

  // -- chat ---------------------------------------------------------------

  /** Send a chat message; resolves with the chat_ack once the broker stored it. */
  sendChat(message) {
    if (this._stopped) return Promise.reject(new Error("not connected: call connect() first"));
    if (this._outbox.size >= this.options.maxOutbox) return Promise.reject(new Error("outbox full"));
    const clientMsgId = message.clientMsgId || newId();
    const frame = { contentType: 1, conversationId: "", ...message, clientMsgId };
    return new Promise((resolve, reject) => {
      this._outbox.set(clientMsgId, { frame, resolve, reject });
      this.send(frame);
    });
  }

  /** A page of a conversation's history (oldest first), before beforeMsgId. */
  history(conversationId, { beforeMsgId, limit = 50 } = {}) {
    return new Promise((resolve, reject) => {
      const message = { type: "history", conversationId, limit };
      if (beforeMsgId !== undefined) message.beforeMsgId = beforeMsgId;
      if (!this.send(message)) return reject(new Error("not connected"));
      const waiting = this._history.get(conversationId) || [];
      waiting.push([resolve, reject]);
      this._history.set(conversationId, waiting);
    });
  }

  /** Report that messages up to msgId were read (the other party gets a read_receipt). */
  markRead(conversationId, msgId) {
    return this.send({ type: "read", conversationId, msgId });
  }

  // -- the connection -------------------------------------------------------

  _setTransport(transport) {
    if (transport === this.transport) return;
    this.transport = transport;
    this._emit("transport", transport);
  }

  _sseAvailable() {
    return this.options.transports.includes("sse") && typeof (this.options.fetch || globalThis.fetch) === "function" &&
      typeof globalThis.TextDecoder === "function";
  }

  /** A WebSocket attempt closed before it opened: fall back to SSE after fallbackAfter such
   *  failures, or at once if plain HTTP reaches the broker's WebSocket path (it answers 426:
   *  whatever refused the upgrade is between us). */
  async _websocketFailed() {
    this._wsFailures++;
    let fallback = this._wsFailures >= this.options.fallbackAfter;
    if (!fallback) {
      try {
        const probe = new URL(this.url);
        probe.protocol = probe.protocol === "wss:" ? "https:" : "http:";
        probe.search = "";
        const response = await (this.options.fetch || globalThis.fetch)(probe.toString(), { cache: "no-store" });
        fallback = response.status === 426;
      } catch {
        // not reachable over HTTP either: the broker is down, not the upgrade
      }
    }
    if (fallback) this._setTransport("sse");
    return fallback;
  }

  /** While on SSE: every websocketRetryInterval, open a WebSocket; if it opens, move back to it
   *  (the SSE stream is closed and the client reconnects and resumes, as after any drop). */
  _scheduleProbe() {
    clearTimeout(this._probe);
    if (this.transport !== "sse" || !this.options.transports.includes("websocket")) return;
    this._probe = setTimeout(() => {
      if (this._stopped || this.transport !== "sse") return;
      const Socket = this.options.WebSocket || globalThis.WebSocket;
      let probe;
      try { probe = new Socket(this.url); } catch { return this._scheduleProbe(); }
      probe.onopen = () => {
        probe.close(1000, "probe");
        this._wsFailures = 0;
        this._setTransport("websocket");
        if (this._ws) this._ws.close(4000, "moving to WebSocket");
      };
      probe.onclose = () => { if (this.transport === "sse") this._scheduleProbe(); };
    }, this.options.websocketRetryInterval);
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this._emit("status", status);
  }

  _retryNow() {
    clearTimeout(this._timer);
    this.nextAttemptAt = null;
    this._attempt();
  }

  async _attempt() {
    this.nextAttemptAt = null;
    if (this._stopped || this._ws) return;
    if (!this.online || !this.visible) { // resumed by setOnline(true) / setVisible(true)
      this.nextAttemptAt = Date.now();
      this._setStatus("reconnecting");
      return;
    }
    this.attempts++;
    this._level++;
    this._emit("attempt", this.attempts);
    const options = this.options;
    let token = options.token;
    try {
      if (options.getToken) token = await options.getToken();
    } catch (error) {
      this._emit("error", error);
      return this._schedule(1006);
    }
    if (this._stopped || this._ws) return;
    let url = this.url;
    if (options.auth === "query" && token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    const Socket = options.WebSocket || globalThis.WebSocket;
    const overSse = this.transport === "sse";
    let ws, opened = false, sse;
    if (overSse) {
      try {
        sse = await import("./sse-socket.mjs");
      } catch (error) {
        this._emit("error", error);
        return this._schedule(1006);
      }
      if (this._stopped || this._ws) return;
    }
    try {
      ws = this._ws = overSse
        ? new sse.SseSocket(options.sseUrl || sse.sseUrlFor(this.url), { token, fetch: options.fetch })
        : new Socket(url);
    } catch (error) { // a malformed URL: retrying cannot help
      this._emit("error", error);
      return this._stop("error", error);
    }
    let lastMessage = Date.now();
    ws.onopen = () => {
      opened = true;
      this._closedUnopened = 0;
      if (overSse) this._wsFailures = 0;
      // over SSE the token went in the stream's Authorization header (and goes with every POST)
      if (!overSse && options.auth !== "query" && token) ws.send(JSON.stringify({ type: "auth", token }));
    };
    ws.onmessage = (event) => {
      lastMessage = Date.now();
      this._emit("frame", { dir: "in", data: event.data, time: lastMessage });
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message === null || typeof message !== "object" || Array.isArray(message)) return; // not a message
      if (message.type === "connection_established") this._established(ws, message, () => lastMessage);
      this._receive(message);
    };
    ws.onerror = () => this._emit("error", new Error(overSse ? "SSE transport error" : "WebSocket error"));
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      const unopened = !overSse && !opened;
      if (unopened && event.code === 1006) this._closedBeforeOpen(url);
      if (unopened && !this._stopped && this._sseAvailable()) {
        // decided once the probe answers; meanwhile this socket stays current, so no other
        // attempt starts
        return this._websocketFailed().then((fallback) => {
          if (this._ws !== ws) return;
          if (!fallback) return this._closed(event);
          this._ws = null;
          this._attempt(); // straight on over SSE: no backoff for a blocked upgrade
        });
      }
      this._closed(event);
    };
  }

  /** 1006 before the socket opened, again: a browser shows a refused upgrade (403 from the
   * origin allow-list, 429/503 from the limits) and an unreachable server alike. Once per
   * streak, an "error" event says which it is when a plain request can tell. */
  _closedBeforeOpen(url) {
    this._closedUnopened = (this._closedUnopened || 0) + 1;
    if (this._closedUnopened !== 2) return;
    const origin = (globalThis.location && globalThis.location.origin) || "";
    const error = (code, text) => Object.assign(new Error(text + " (1006 before open, twice)"), { code });
    const refused = error("UPGRADE_REFUSED", "the broker refused the upgrade: is " + (origin || "the origin") +
      " in its [limits] allowed_origins? `broker doctor " + this.url + (origin && " --origin " + origin) + "` tells");
    const unreachable = error("UNREACHABLE", "cannot reach " + this.url + ": is the broker running there?");
    const fetcher = globalThis.fetch;
    if (typeof fetcher !== "function") return this._emit("error", refused);
    // An answer of any kind (opaque here) means the server is up and refused the upgrade itself.
    fetcher(url.replace(/^ws/, "http").split("?")[0], { mode: "no-cors", cache: "no-store" }).then(
      () => this._emit("error", refused), () => this._emit("error", unreachable));
  }

  _closed(event) {
    this._ws = null;
    clearInterval(this._watchdog);
    clearTimeout(this._stable);
    clearTimeout(this._joinTimer);
    this._joinQueue = [];
    this._failHistory(new Error("connection closed"));
    this.lastClose = { ...explainClose(event.code), reason: event.reason || "" };
    const expired = event.code === 4005;
    if (expired && !this.options.getToken) this.lastClose.action = "stop"; // its only token has expired
    this._emit("close", this.lastClose);
    if (this._stopped) return;
    if (this.lastClose.action === "stop") {
      this._stop(event.code === 1000 ? "disconnected" : "error", new Error("closed: " + this.lastClose.meaning));
    } else if (expired) {
      this._setStatus("reconnecting");
      this._retryNow(); // at once: getToken brings the fresh token
    } else {
      this._schedule(event.code);
    }
  }

  _established(ws, message, lastMessage) {
    this.userId = message.userId;
    this.attempts = 0;
    // the backoff resets only once the connection has held for stableAfter: a server that
    // accepts and then closes at once is backed off like one that refuses, not hit every
    // few hundred ms
    clearTimeout(this._stable);
    this._stable = setTimeout(() => { this._level = 0; }, this.options.stableAfter);
    if (this.transport === "sse") this._scheduleProbe();
    this._setStatus("connected");
    const interval = message.heartbeatInterval || 30000;
    clearInterval(this._watchdog);
    this._watchdog = setInterval(() => {
      if (Date.now() - lastMessage() > 2.5 * interval) ws.close(4000, "heartbeat watchdog");
      else this.send({ type: "ping" });
    }, interval);
    this._joinQueue = [];
    this._joinTokens = this.options.joinBurst - Math.min(this._outbox.size, this.options.joinBurst);
    this._joinStamp = Date.now();
    for (const { frame } of this._outbox.values()) this.send(frame);
    for (const job of this.jobs.values()) this._queueJoin(job);
  }

  _schedule(code) {
    if (this.attempts >= this.options.maxAttempts) {
      return this._stop("error", new Error("gave up after " + this.attempts + " attempts"));
    }
    const { minDelay, maxDelay, rateLimitDelay } = this.options;
    let delay = Math.random() * Math.min(maxDelay, minDelay * 2 ** this._level);
    if (explainClose(code).action === "wait") delay += rateLimitDelay;
    this._setStatus("reconnecting");
    this.nextAttemptAt = Date.now() + delay;
    this._timer = setTimeout(() => this._attempt(), delay);
  }

  _stop(status, error) {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._stable);
    clearTimeout(this._joinTimer);
    clearTimeout(this._probe);
    clearInterval(this._watchdog);
    this.nextAttemptAt = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, "client disconnect");
    for (const { reject } of this._outbox.values()) reject(error);
    this._outbox.clear();
    this._failHistory(error);
    this._setStatus(status);
  }

  _failHistory(error) { // a history request is answered on the connection that asked, or never
    for (const waiting of this._history.values()) for (const [, reject] of waiting) reject(error);
    this._history.clear();
  }

  /** token_expiring: get a new token and send it on the open connection. */
  async _refreshToken(ws, message) {
    this.tokenExpiresAt = message.expiresAt;
    this._emit("token_expiring", message);
    if (!this.options.getToken) return;
    let token;
    try {
      token = await this.options.getToken();
    } catch (error) {
      this._emit("error", error);
      return; // the connection runs until it expires (4005); the reconnect tries again
    }
    if (this._ws === ws && ws.readyState === OPEN && token) {
      ws.send(JSON.stringify({ type: "auth", token }));
      this._emit("frame", { dir: "out", data: JSON.stringify({ type: "auth", token: "***" }), time: Date.now() });
    }
  }

  _receive(message) {
    const { type } = message;
    const job = message.data && this.jobs.get(message.data.jobId);
    if (job && typeof message.seq === "number") {
      this._jobEvent(job, message);
    } else if (type === "joined") {
      const joined = this.jobs.get(message.jobId);
      if (joined && validSeq(message.seq)) {
        // a joined below what was delivered is stale (an earlier join answered late): keep the
        // higher seq, or events in between would be delivered twice; after a gap or with a new
        // epoch, seqs restarted and the joined seq is the truth
        const restarted = joined.gap || (message.epoch !== undefined && message.epoch !== joined.epoch);
        joined.lastSeq = restarted || joined.lastSeq === undefined ? message.seq : Math.max(joined.lastSeq, message.seq);
        if (message.epoch !== undefined) joined.epoch = message.epoch;
        joined.joining = joined.gap = false;
        this._call(joined, "onJoined", message);
      }
    } else if (type === "error") {
      const gapped = message.code === "HISTORY_GAP" && this.jobs.get(message.jobId);
      if (gapped) {
        gapped.gap = true; // the latest status that follows is taken whatever its seq
        this._call(gapped, "onGap", message);
      }
      const pending = message.clientMsgId && this._outbox.get(message.clientMsgId);
      if (pending) {
        this._outbox.delete(message.clientMsgId);
        pending.reject(Object.assign(new Error(message.message), { code: message.code }));
      }
      const asked = message.request === "history" && this._history.get(message.conversationId);
      if (asked && asked.length) asked.shift()[1](Object.assign(new Error(message.message), { code: message.code }));
      this._emit("servererror", message);
    } else if (type === "chat_ack") {
      const pending = this._outbox.get(message.clientMsgId);
      if (pending) {
        this._outbox.delete(message.clientMsgId);
        pending.resolve(message);
      }
    } else if (type === "history") {
      const waiting = this._history.get(message.conversationId);
      if (waiting && waiting.length) waiting.shift()[0](message);
    } else if (type === "token_expiring") {
      this._refreshToken(this._ws, message);
    } else if (type === "token_refreshed") {
      this.tokenExpiresAt = message.expiresAt;
      this.refreshes++;
      this._emit("token_refreshed", message);
    } else if (type === "left" && message.code === "FORBIDDEN") {
      const job = this.jobs.get(message.jobId);
      if (job) {
        this.jobs.delete(message.jobId); // the refreshed token no longer allows it: no rejoin
        this._call(job, "onLeft", message);
      }
      this._emit("servererror", { type: "error", code: "FORBIDDEN", message: message.message, jobId: message.jobId });
    } else if (type === "read_receipt") {
      this._emit("read", message);
    } else if (type === undefined && message.chatType && message.msgId) {
      const seen = this._seenChat.get(message.conversationId) || 0;
      if (message.msgId <= seen) return; // delivered again after a reconnect
      this._seenChat.delete(message.conversationId); // newest last: the oldest is dropped first
      this._seenChat.set(message.conversationId, message.msgId);
      if (this._seenChat.size > 1000) this._seenChat.delete(this._seenChat.keys().next().value);
      this._emit("chat", message);
    }
    this._emit("message", message);
  }
}
