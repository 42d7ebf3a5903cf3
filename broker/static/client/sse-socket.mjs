// sse-socket.mjs: the broker's SSE transport in the shape of a WebSocket, for BrokerClient.
// Wire contract: docs/PROTOCOL.md, "The SSE transport".
//
// - GET <sseUrl> (fetch, streamed: the token goes in the Authorization header, never the
//   URL) is the server's side: unnamed events are the messages /ws would send; `event: stream`
//   opens (it names the stream), `event: close` carries the close code; `:ping n` comments
//   are answered with a POSTed {"type":"pong","seq":n}.
// - send(text) POSTs one message at a time, in order (the next after the answer to the last),
//   with X-Broker-Stream and the same token.
// - onopen / onmessage({data}) / onclose({code, reason}) / onerror, readyState, close(code,
//   reason): what BrokerClient uses of a WebSocket.

const CONNECTING = 0, OPEN = 1, CLOSED = 3;

/** The close code an HTTP refusal of the stream or of a POST stands for. */
export function closeCodeForStatus(status) {
  if (status === 401 || status === 403) return 1008; // a new token is needed (or a foreign origin)
  if (status === 413) return 1009;
  if (status === 429) return 4008;
  if (status === 503) return 1013; // draining or at capacity: retry later
  return 1006; // 404/410 (the stream is gone), 5xx from a proxy, ...: reconnect
}

/** ws(s)://host/…/ws -> http(s)://host/…/sse (the broker's default paths). */
export function sseUrlFor(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.endsWith("/ws") ? url.pathname.slice(0, -3) + "/sse" : "/sse";
  url.search = "";
  url.hash = "";
  return url.toString();
}

export class SseSocket {
  /**
   * @param {string} url  http(s) URL of the broker's SSE path
   * @param {{token?: string, fetch?: typeof fetch}} [options]
   */
  constructor(url, { token, fetch: fetchImpl } = {}) {
    this.url = url;
    this.readyState = CONNECTING;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._token = token;
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    this._abort = new AbortController();
    this._streamId = null;
    this._queue = []; // texts to POST, in order
    this._posting = false;
    this._close = null; // {code, reason} from the server's close event, or ours
    this._finished = false;
    this._read();
  }

  _headers(extra) {
    const headers = { ...extra };
    if (this._token) headers.Authorization = "Bearer " + this._token;
    return headers;
  }

  async _read() {
    let response;
    try {
      response = await this._fetch(this.url, {
        headers: this._headers({ Accept: "text/event-stream" }), cache: "no-store", signal: this._abort.signal,
      });
    } catch {
      return this._finish(1006, "the stream could not be opened");
    }
    if (!response.ok || !response.body) {
      const reason = (await response.text().catch(() => "")).trim();
      return this._finish(closeCodeForStatus(response.status), reason || "HTTP " + response.status);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", name = "", data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (;;) {
          const end = buffer.search(/[\r\n]/);
          if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break; // an LF may follow
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + (buffer[end] === "\r" && buffer[end + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (data.length) this._dispatch(name || "message", data.join("\n"));
            name = "";
            data = [];
          } else if (line[0] === ":") {
            const ping = /^ping (\d+)$/.exec(line.slice(1).trim());
            if (ping) this._enqueue(JSON.stringify({ type: "pong", seq: Number(ping[1]) }));
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
            if (fieldValue[0] === " ") fieldValue = fieldValue.slice(1);
            if (field === "data") data.push(fieldValue);
            else if (field === "event") name = fieldValue;
          }
        }
      }
    } catch {
      // aborted by close(), or the connection broke: the close below says which
    }
    const close = this._close || { code: 1006, reason: "connection lost" };
    this._finish(close.code, close.reason);
  }

  _dispatch(name, data) {
    if (this._finished) return;
    if (name === "message") {
      if (this.onmessage) this.onmessage({ data });
    } else if (name === "stream") {
      this._streamId = JSON.parse(data).streamId;
      this.readyState = OPEN;
      if (this.onopen) this.onopen({});
    } else if (name === "close") {
      const { code, reason } = JSON.parse(data);
      this._close = { code, reason: reason || "" };
    }
  }

  /** Queue one message (POSTed after those before it). */
  send(text) {
    if (this.readyState !== OPEN) throw new Error("SseSocket is not open");
    this._enqueue(text);
  }

  _enqueue(text) {
    if (this._finished) return;
    this._queue.push(text);
    if (!this._posting) this._post();
  }

  async _post() {
    this._posting = true;
    try {
      while (this._queue.length && !this._finished) {
        const response = await this._fetch(this.url, {
          method: "POST", body: this._queue[0], signal: this._abort.signal,
          headers: this._headers({ "Content-Type": "application/json", "X-Broker-Stream": this._streamId }),
        });
        if (response.status !== 204) {
          const reason = (await response.text().catch(() => "")).trim();
          return this._fail(closeCodeForStatus(response.status), reason || "HTTP " + response.status);
        }
        this._queue.shift();
      }
    } catch {
      if (!this._finished) this._fail(1006, "a message could not be sent");
    } finally {
      this._posting = false;
    }
  }

  _fail(code, reason) {
    if (this.onerror) this.onerror(new Error(reason));
    this.close(code, reason);
  }

  /** Close as a WebSocket would: onclose follows with this code (unless the server's came first). */
  close(code = 1000, reason = "") {
    if (this._finished) return;
    if (!this._close) this._close = { code, reason };
    this._finish(this._close.code, this._close.reason);
  }

  _finish(code, reason) {
    if (this._finished) return;
    this._finished = true;
    this.readyState = CLOSED;
    this._queue = [];
    this._abort.abort();
    setTimeout(() => { if (this.onclose) this.onclose({ code, reason, wasClean: code !== 1006 }); }, 0);
  }
}
