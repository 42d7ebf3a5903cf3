// The console page: the broker's own client, driven by hand. Nothing is stored: the
// token lives in the input field and the client only.
const root = document.documentElement;
const { BrokerClient } = await import(root.dataset.client + "/broker-client.mjs");

const $ = (id) => document.getElementById(id);
const WHAT_NEXT = {
  stop: "the client stays disconnected (connect again; with a new token if it was refused)",
  retry: "the client reconnects with backoff and resumes its jobs with lastSeq",
  wait: "the client reconnects after a longer backoff",
};

let client = null;
let subscription = null;
const entries = [];

$("url").value = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + root.dataset.ws;

function showStatus() {
  const status = client ? client.status : "disconnected";
  $("status").textContent = status;
  $("status").className = "badge " + status;
  $("transport").textContent = client ? "over " + (client.transport === "sse" ? "SSE + POST" : "WebSocket") : "";
  $("attempts").textContent = client && client.attempts ? "attempt " + client.attempts : "";
  const wait = client && client.nextAttemptIn;
  $("countdown").textContent = wait === null || wait === undefined ? "" : "next attempt in " + (wait / 1000).toFixed(1) + " s";
  $("offline").textContent = client && !client.online ? "Go online" : "Go offline";
}
setInterval(showStatus, 100);

// Every request's outcome is shown where it was made; errors the broker sends that belong
// to no request (or to a raw frame) go to "Last error".
const outcome = (error) => (error.code ? error.code + ": " : "") + error.message;

$("connect").onclick = () => {
  $("connect-result").textContent = "";
  if (!$("token").value.trim()) {
    $("connect-result").textContent = "enter a token first: with `make run`, the static token printed at start " +
      "(demo-token) or a JWT from `broker token --sub alice` (needed for chat)";
    $("token").focus();
    return;
  }
  if (client) client.disconnect();
  subscription = null;
  $("job-state").textContent = "";
  $("job-seq").textContent = "";
  $("last-error").textContent = "none";
  $("token-info").textContent = "";
  // getToken reads the field on every attempt and on token_expiring: paste a fresh token there
  client = new BrokerClient($("url").value.trim(), { getToken: () => $("token").value, auth: $("auth").value });
  client.on("token_expiring", (message) => ($("token-info").textContent =
    "expires at " + message.expiresAt + ": sending the token in the field on this connection"));
  client.on("token_refreshed", (message) => ($("token-info").textContent =
    "refreshed in-band (" + client.refreshes + "), now expires at " + (message.expiresAt || "never")));
  client.on("status", showStatus);
  client.on("attempt", showStatus);
  client.on("transport", showStatus);
  client.on("frame", record);
  client.on("error", (error) => ($("last-error").textContent = outcome(error)));
  client.on("servererror", (error) => {
    $("last-error").textContent = outcome(error);
    if (subscription && error.jobId === subscription.jobId && error.code !== "HISTORY_GAP") {
      $("job-state").textContent = "join refused: " + outcome(error);
    }
  });
  client.on("close", (close) => {
    const next = close.code === 4005 ? "the client reconnects at once with the token in the field (paste a fresh one)"
      : WHAT_NEXT[close.action];
    $("close-info").textContent = close.code + " " + (close.reason ? "(" + close.reason + ") " : "") +
      close.meaning + ": " + next;
  });
  client.connect();
};
$("disconnect").onclick = () => client && client.disconnect();
$("drop").onclick = () => client && client.drop();
$("offline").onclick = () => client && client.setOnline(!client.online);

$("join").onclick = () => {
  if (!client) return void ($("job-state").textContent = "connect first");
  if (subscription) subscription.leave();
  const jobId = $("job-id").value.trim();
  const lastSeq = $("last-seq").value === "" ? undefined : Number($("last-seq").value);
  $("job-state").textContent = "joining " + jobId;
  $("job-seq").textContent = "";
  const handle = client.joinJob(jobId, {
    onJoined: (joined) => ($("job-state").textContent = "joined " + joined.jobId + " at seq " + joined.seq),
    onGap: (gap) => ($("job-state").textContent = "history gap: " + gap.message),
    onEvent: (event) => ($("job-seq").textContent = "last seq " + event.seq + " (" + event.type + ")"),
  }, { lastSeq });
  subscription = { jobId, leave: () => handle.leave() };
};
$("leave").onclick = () => {
  if (subscription) subscription.leave();
  subscription = null;
  $("job-state").textContent = "left";
  $("job-seq").textContent = "";
};

$("chat-send").onclick = () => {
  if (!client) return void ($("chat-result").textContent = "connect first");
  const chatType = Number($("chat-type").value);
  const message = { chatType, content: $("chat-content").value };
  if (chatType === 2) message.recvId = $("chat-recv").value.trim();
  else message.conversationId = $("chat-conv").value.trim();
  $("chat-result").textContent = "sending";
  client.sendChat(message).then(
    (ack) => ($("chat-result").textContent = "stored as msgId " + ack.msgId + " in " + ack.conversationId),
    (error) => ($("chat-result").textContent = "not sent: " + outcome(error)),
  );
};

$("raw-send").onclick = () => {
  let message;
  try {
    message = JSON.parse($("raw-frame").value);
  } catch (error) {
    $("raw-result").textContent = "not JSON: " + error.message;
    return;
  }
  $("raw-result").textContent = client && client.send(message) ? "sent" : "not connected";
};

// -- the frame log ----------------------------------------------------------

function clock(time) {
  const date = new Date(time);
  return date.toTimeString().slice(0, 8) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function record(frame) {
  let parsed = null;
  try { parsed = JSON.parse(frame.data); } catch { /* not JSON: shown as text */ }
  const entry = { ...frame, type: parsed ? parsed.type || (parsed.chatType ? "chat" : "") : "", seq: parsed && parsed.seq };
  entries.push(entry);
  const max = Math.max(10, Number($("max").value) || 1000);
  while (entries.length > max) {
    entries.shift();
    if ($("log").firstChild && !$("pause").checked) $("log").firstChild.remove();
  }
  if (!$("pause").checked) $("log").append(row(entry));
  $("frame-count").textContent = entries.length + " frames";
}

function row(entry) {
  const tr = document.createElement("tr");
  tr.className = entry.dir;
  tr.dataset.type = entry.type;
  for (const [text, cls] of [[clock(entry.time), ""], [entry.dir === "in" ? "\u2190" : "\u2192", ""],
    [entry.type, ""], [entry.seq ?? "", ""], [entry.data, "frame"]]) {
    const td = document.createElement("td");
    td.textContent = String(text);
    if (cls) td.className = cls;
    tr.append(td);
  }
  applyFilter(tr);
  return tr;
}

function applyFilter(tr) {
  const filter = $("filter").value.trim();
  tr.classList.toggle("hidden", filter !== "" && !tr.dataset.type.includes(filter));
}

function rerender() {
  $("log").replaceChildren(...entries.map(row));
}

$("filter").oninput = () => $("log").querySelectorAll("tr").forEach(applyFilter);
$("pause").onchange = () => $("pause").checked || rerender();
$("clear").onclick = () => {
  entries.length = 0;
  rerender();
  $("frame-count").textContent = "0 frames";
};
$("download").onclick = () => {
  const lines = entries.map((e) => JSON.stringify({ time: new Date(e.time).toISOString(), dir: e.dir, frame: e.data }));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "application/x-ndjson" }));
  link.download = "broker-frames.ndjson";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
};
showStatus();
root.dataset.ready = "true"; // the client module is loaded and every control is wired
