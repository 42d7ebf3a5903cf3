// Compiled with `tsc --strict --noEmit` by tests/browser/test_js_package.py: the package's
// declarations, resolved through its package.json exports map, as a TypeScript user sees them.
import { BrokerClient, explainClose, type ChatAck, type ConnectionStatus } from "trio-broker-client";
import { configureBroker, useWebSocket, type HookConnectionStatus } from "trio-broker-client/react";
import { createWxClient, wxWebSocket, type Wx } from "trio-broker-client/adapters/wx";

const client = new BrokerClient("wss://broker.example/ws", { getToken: async () => "token", maxAttempts: 5 });
const off: () => void = client.on("status", (status: ConnectionStatus) => console.log(status));
client.on("close", (close) => console.log(close.code, close.action, close.reason));
client.on("chat", (message) => console.log(message.sendId, message.content.length));
const job = client.joinJob("job-1", {
  onJobStatusUpdate: (data) => console.log(data.status, data.completedStages?.length),
  onStageCompleted: (data, message) => console.log(data.stage, message.seq),
  onJobError: (data) => console.log(data.error),
}, { lastSeq: 41 });
job.leave();
off();
const ack: Promise<ChatAck> = client.sendChat({ chatType: 2, recvId: "42", content: "hi" });
ack.then((a) => a.msgId.toFixed());
client.history("group_001", { limit: 10 }).then((page) => page.messages.map((m) => m.msgId));
const action: "stop" | "retry" | "wait" = explainClose(4001).action;
const wait: number | null = client.nextAttemptIn;
console.log(action, wait, client.attempts, client.status === "reconnecting");
// @ts-expect-error chatType is 1 (group) or 2 (private)
client.sendChat({ chatType: 3, content: "x" });
// @ts-expect-error there is no such option
new BrokerClient("wss://broker.example/ws", { tokn: "x" });

configureBroker({ url: "wss://broker.example/ws", token: "token" });
export function useJobBadge(jobId: string): string {
  const { connectionStatus, reconnectAttempts, connect, disconnect } = useWebSocket({
    jobId,
    onJobStatusUpdate: (data) => console.log(data.status),
    onConnectionChange: (connected: boolean) => console.log(connected ? "Live" : "Offline"),
    onStatusChange: (status: HookConnectionStatus) => console.log(status),
    onError: (error) => console.error(error),
  });
  const status: "connecting" | "connected" | "disconnected" | "error" = connectionStatus;
  connect();
  disconnect();
  return `${status} ${reconnectAttempts}`;
}

declare const wx: Wx;
createWxClient(wx, "wss://broker.example/ws", { token: "token" }).connect();
new BrokerClient("wss://broker.example/ws", { WebSocket: wxWebSocket(wx, { header: { "X-App": "1" } }) });
