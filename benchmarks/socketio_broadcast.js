// Baseline: a Node socket.io 4 broadcast server, for ratios (python -m tests.load ... --compare).
//
// What users pick most for this job, set up the way its documentation shows, with the
// WebSocket transport only (no long-polling) and no compression. Subscribers emit
// "join" (a room name, with an ack); a publisher emits "publish" ({jobId, type, data})
// and the server numbers the event per room, broadcasts it to the room as "job"
// (encoded once by the adapter) and, when the emit asked for an ack, answers with the
// seq. Nothing is stored: socket.io keeps no history. Installed by `make bench-setup`
// (npm ci in benchmarks/); not part of the broker.

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { version } = require("socket.io/package.json");

const portIndex = process.argv.indexOf("--port");
if (portIndex < 0 || !process.argv[portIndex + 1]) {
  console.error("usage: node socketio_broadcast.js --port PORT");
  process.exit(2);
}
const port = Number(process.argv[portIndex + 1]);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 1e6,
});

const seqs = new Map();

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(seqs.get(String(room)) || 0);
  });
  socket.on("publish", (event, ack) => {
    const room = String(event.jobId);
    const seq = (seqs.get(room) || 0) + 1;
    seqs.set(room, seq);
    io.to(room).emit("job", {
      type: event.type,
      seq,
      data: { jobId: room, ...event.data, timestamp: new Date().toISOString() },
    });
    if (typeof ack === "function") ack(seq);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`socket.io ${version} (node ${process.version}) broadcast on ${port}`);
});

process.on("SIGTERM", () => process.exit(0));
