// The admin page: an operator's view of the broker through the server API only.
// The API key lives in sessionStorage (this tab) and in the Authorization header of each
// request; everything shown that comes from the broker (ids, event data, messages) is set
// as text, never parsed as HTML.
const root = document.documentElement;
const API = root.dataset.api;
const PUBLISH = root.dataset.publish;
const KEY_ITEM = "trio-broker-admin-key";
const HISTORY = 150; // samples kept for the charts (5 minutes at the default 2 s)

const $ = (id) => document.getElementById(id);
const samples = []; // {time, deliveries, publishes, connections}: every node together
let timer = null;
let watchedUser = null; // the user looked up last: its line is refreshed with the stats
let webhookRoutes = null; // from the OpenAPI document: does this broker have a webhook sender?

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + key() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path.startsWith("/") ? path : API + "/" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  let answer = null;
  try { answer = await response.json(); } catch { answer = null; }
  if (response.status === 401) signOut("the key was refused");
  return { status: response.status, body: answer };
}

const part = (value) => encodeURIComponent(value.trim());
const problem = (answer) => answer.status + " " + (answer.body && answer.body.message ? answer.body.message : "");

function text(element, value) {
  element.textContent = value === undefined || value === null ? "" : String(value);
}

function cells(tr, values) {
  for (const value of values) {
    const td = document.createElement("td");
    text(td, value);
    tr.append(td);
  }
  return tr;
}

// -- signing in --------------------------------------------------------------

function signedIn(yes) {
  document.body.classList.toggle("signed-out", !yes);
  text($("state"), yes ? "signed in" : "signed out");
  $("state").className = "badge " + (yes ? "in" : "out");
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_ITEM);
  clearTimeout(timer);
  timer = null;
  signedIn(false);
  text($("login-error"), reason || "");
}

async function start() {
  const answer = await api("GET", "stats");
  if (answer.status !== 200) {
    signOut(answer.status === 401 ? "the key was refused" : "the API answered " + problem(answer));
    return;
  }
  text($("login-error"), "");
  signedIn(true);
  show(answer.body);
  schedule();
  loadWebhooks();
}

$("login-form").onsubmit = (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key").value);
  $("key").value = "";
  start();
};
$("sign-out").onclick = () => signOut("");
$("interval").onchange = () => timer && schedule();

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(refresh, Number($("interval").value));
}

async function refresh() {
  try {
    const answer = await api("GET", "stats");
    if (answer.status === 200) show(answer.body);
    else text($("updated"), "stats: " + problem(answer));
    if (watchedUser) await lookUpUser(watchedUser); // connections close after the answer to a disconnect: keep looking
  } catch (error) {
    text($("updated"), "broker unreachable: " + error.message);
  }
  if (key()) schedule();
}

// -- nodes and charts ---------------------------------------------------------

function show(stats) {
  const rows = stats.nodes.map((node) => cells(document.createElement("tr"), [
    node.node, node.connections, node.users, node.jobRooms, node.conversations, node.deliveriesPerSecond,
    node.publishesPerSecond, node.chatMessagesPerSecond, node.webhooks.queueDepth ?? "-",
    node.webhooks.failures ?? "-", node.webhooks.deadLetters ?? "-", Math.round(node.uptimeSeconds) + " s",
  ]));
  $("nodes").replaceChildren(...rows);
  const sum = (field) => stats.nodes.reduce((total, node) => total + (node[field] || 0), 0);
  const sample = { time: Date.now(), deliveries: sum("deliveriesPerSecond"), publishes: sum("publishesPerSecond"),
    connections: sum("connections") };
  samples.push(sample);
  while (samples.length > HISTORY) samples.shift();
  text($("totals"), stats.nodes.length + (stats.cluster ? " live node(s) in the cluster" : " node") + ": " +
    sample.connections + " connections, " + sum("users") + " users online, " + sum("jobRooms") + " job rooms, " +
    sum("conversations") + " conversations");
  for (const series of ["deliveries", "publishes", "connections"]) {
    draw($("chart-" + series), samples.map((s) => s[series]));
    text($("now-" + series), "(now " + sample[series] + ")");
  }
  text($("updated"), "updated " + new Date().toTimeString().slice(0, 8));
}

function draw(svg, values) {
  const max = Math.max(1, ...values);
  const step = 300 / Math.max(1, HISTORY - 1);
  const offset = (HISTORY - values.length) * step; // the newest sample at the right edge
  const points = values.map((v, i) => (offset + i * step).toFixed(1) + "," + (78 - (v / max) * 74).toFixed(1));
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.append(line);
  }
  line.setAttribute("points", points.join(" "));
  svg.dataset.samples = String(values.length);
  svg.dataset.max = String(Math.max(0, ...values));
  svg.dataset.latest = String(values[values.length - 1] ?? 0);
}

// -- webhook dead letters (when this broker has a webhook sender) ----------------

async function loadWebhooks() {
  if (webhookRoutes === null) {
    const response = await fetch(API + "/openapi.json", { cache: "no-store" });
    const document_ = await response.json();
    webhookRoutes = Object.prototype.hasOwnProperty.call(document_.paths, API + "/webhooks/failed");
  }
  if (!webhookRoutes) {
    text($("webhooks-state"), "This broker has no webhook sender.");
    return;
  }
  const answer = await api("GET", "webhooks/failed");
  if (answer.status !== 200) {
    text($("webhooks-state"), "dead letters: " + problem(answer));
    return;
  }
  const items = Array.isArray(answer.body) ? answer.body : answer.body.failed || answer.body.events || [];
  text($("webhooks-state"), items.length + " dead letter(s)");
  $("dead-letters").replaceChildren(...items.map((item) => {
    const li = document.createElement("li");
    const retry = document.createElement("button");
    text(retry, "Retry");
    retry.onclick = async () => {
      const result = await api("POST", "webhooks/failed/" + encodeURIComponent(item.id) + "/retry");
      text(retry, result.status === 200 ? "sent again" : problem(result));
    };
    li.append(document.createTextNode(JSON.stringify(item) + " "), retry);
    return li;
  }));
}

// -- a job ---------------------------------------------------------------------

$("job-form").onsubmit = async (event) => {
  event.preventDefault();
  const id = part($("job-id").value);
  const job = await api("GET", "jobs/" + id);
  text($("job-summary"), job.status === 200
    ? "seq " + job.body.seq + ", status " + (job.body.status ?? "(none)") + (job.body.epoch ? ", epoch " + job.body.epoch : "")
    : problem(job));
  const presence = await api("GET", "jobs/" + id + "/presence");
  text($("job-presence"), presence.status === 200
    ? presence.body.count + " watching: " + presence.body.users.join(", ") : problem(presence));
  const page = await api("GET", "jobs/" + id + "/events?limit=50&after=" + (Number($("job-after").value) || 0));
  const events = page.status === 200 ? page.body.events : [];
  if (page.status !== 200 && job.status === 200) text($("job-summary"), $("job-summary").textContent + "; " + problem(page));
  $("job-events").replaceChildren(...events.map((e) => {
    const tr = cells(document.createElement("tr"), [e.seq, e.type, JSON.stringify(e.data)]);
    tr.lastChild.className = "data";
    return tr;
  }));
};

$("publish-form").onsubmit = async (event) => {
  event.preventDefault();
  const jobId = $("job-id").value.trim() || "admin-test";
  const answer = await api("POST", PUBLISH, { jobId, type: "job_status", data: { status: $("publish-status").value } });
  text($("publish-result"), answer.status === 200 ? "published " + jobId + " seq " + answer.body.seq : problem(answer));
};

// -- a user --------------------------------------------------------------------

async function lookUpUser(id = $("user-id").value) {
  watchedUser = id;
  const answer = await api("GET", "users/" + part(id));
  text($("user-summary"), answer.status === 200
    ? (answer.body.online ? "online: " + answer.body.connections + " connection(s) on " + answer.body.nodes.join(", ")
      : "offline") + (answer.body.banned ? "; banned" : "")
    : problem(answer));
}

$("user-form").onsubmit = (event) => {
  event.preventDefault();
  lookUpUser();
};

$("disconnect-form").onsubmit = async (event) => {
  event.preventDefault();
  const body = { code: Number($("disconnect-code").value) || 4009 };
  if ($("disconnect-reason").value.trim()) body.reason = $("disconnect-reason").value.trim();
  if (Number($("ban-seconds").value) > 0) body.banSeconds = Number($("ban-seconds").value);
  const answer = await api("POST", "users/" + part($("user-id").value) + "/disconnect", body);
  text($("user-result"), answer.status === 200
    ? "closing " + answer.body.connections + " connection(s) with " + answer.body.code
      + (answer.body.bannedForSeconds ? ", banned for " + answer.body.bannedForSeconds + " s" : "")
    : problem(answer));
  lookUpUser();
};

$("lift-ban").onclick = async () => {
  const answer = await api("DELETE", "users/" + part($("user-id").value) + "/ban");
  text($("user-result"), answer.status === 200 ? (answer.body.lifted ? "ban lifted" : "there was no ban") : problem(answer));
  lookUpUser();
};

// -- a conversation ------------------------------------------------------------

$("conversation-form").onsubmit = async (event) => {
  event.preventDefault();
  const before = Number($("conversation-before").value);
  const answer = await api("GET", "conversations/" + part($("conversation-id").value) + "/messages?limit=50" +
    (before > 0 ? "&before=" + before : ""));
  const messages = answer.status === 200 ? answer.body.messages : [];
  text($("conversation-summary"), answer.status === 200
    ? messages.length + " message(s), newest first" + (answer.body.hasMore ? "; older ones exist" : "") : problem(answer));
  $("messages").replaceChildren(...messages.map((m) => {
    const tr = cells(document.createElement("tr"), [m.msgId, m.sendId, m.timestamp, m.content]);
    tr.lastChild.className = "data";
    return tr;
  }));
};

signedIn(false);
if (key()) start();
root.dataset.ready = "true"; // every control is wired
