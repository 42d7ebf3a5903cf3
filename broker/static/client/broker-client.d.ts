// Types of broker-client.mjs (checked with `tsc --strict --noEmit` in the broker's tests).

export type ConnectionStatus = "connecting" | "connected" | "reconnecting" | "disconnected" | "error";
export type CloseAction = "stop" | "retry" | "wait";

export interface CloseInfo {
  code: number;
  action: CloseAction;
  meaning: string;
}

export const CLOSE_CODES: Readonly<Record<number, readonly [CloseAction, string]>>;
export function explainClose(code: number): CloseInfo;

/** The part of the WebSocket interface the client uses (browsers, Node 22+, adapters). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface BrokerClientOptions {
  /** A fixed token; or getToken, called before every attempt and on token_expiring (the
   *  new token is sent on the open connection); after a 4005 it reconnects at once with it. */
  token?: string;
  getToken?: () => string | Promise<string>;
  /** "frame" (default): the token goes in the first {"type":"auth"} frame, never in a URL. */
  auth?: "frame" | "query";
  WebSocket?: WebSocketConstructor;
  /** Backoff: attempt n waits random(0, min(maxDelay, minDelay * 2^n)) ms. */
  minDelay?: number;
  maxDelay?: number;
  /** Consecutive failed attempts before the status becomes "error" (default: unlimited). */
  maxAttempts?: number;
  /** The backoff starts again from minDelay only once a connection has held this long
   *  (default 10000 ms): a server that accepts and then closes at once is backed off, not
   *  hit every few hundred ms (`attempts` still counts the current streak from 0). */
  stableAfter?: number;
  /** Joins sent at once (default 20), then joinRate per second (default 10): a page with many
   *  jobs rejoins them all after a reconnect without being rate limited by the broker. */
  joinBurst?: number;
  joinRate?: number;
  /** Added to the backoff after a 4008 close (rate limited). Default 15000 ms. */
  rateLimitDelay?: number;
  /** Chat sends held while reconnecting, at most (default 32; beyond it sendChat rejects). */
  maxOutbox?: number;
  /** Follow document visibility and window online/offline (default true, where they exist). */
  lifecycle?: boolean;
  /** Transports in order of preference (default ["websocket", "sse"]): when the WebSocket
   *  cannot open, the client goes on over SSE + POST with the same API and resume. */
  transports?: Transport[];
  /** WebSocket attempts in a row that never opened before moving to SSE (default 2; at once
   *  when plain HTTP reaches the WebSocket path, i.e. the upgrade was stripped on the way). */
  fallbackAfter?: number;
  /** While on SSE, try WebSocket again this often (ms, default 300000). */
  websocketRetryInterval?: number;
  /** The SSE path's URL (default: the WebSocket URL with http(s) and /ws replaced by /sse). */
  sseUrl?: string;
  /** fetch for the SSE transport (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export type Transport = "websocket" | "sse";

export interface BrokerMessage {
  type?: string;
  [key: string]: any;
}

export interface JobEventMessage<D = JobEventData> {
  type: string;
  seq: number;
  epoch?: string | number;
  data: D;
}

export interface JobEventData {
  jobId: string;
  timestamp: string;
  [key: string]: any;
}
export interface JobStatusData extends JobEventData {
  status: string;
  currentStage?: string;
  completedStages?: string[];
}
export interface StageCompletedData extends JobEventData {
  stage: string;
  nextStage?: string;
}
export interface JobErrorData extends JobEventData {
  error: string;
  stage?: string;
}

export interface JobHandlers {
  onJobStatusUpdate?(data: JobStatusData, message: JobEventMessage<JobStatusData>): void;
  onStageCompleted?(data: StageCompletedData, message: JobEventMessage<StageCompletedData>): void;
  onJobError?(data: JobErrorData, message: JobEventMessage<JobErrorData>): void;
  /** Every job event, the three above and any extra event types. */
  onEvent?(message: JobEventMessage): void;
  /** The broker confirmed the (re)join; seq is the job's seq at that moment. */
  onJoined?(message: { type: "joined"; jobId: string; seq: number; epoch?: string | number }): void;
  /** Events were lost (history no longer reaches back): the latest status follows. */
  onGap?(message: BrokerMessage): void;
  /** A refreshed token no longer allows this job: it was left (no rejoin). */
  onLeft?(message: { type: "left"; jobId: string; code: "FORBIDDEN"; message: string }): void;
}

export interface JobSubscription {
  leave(): void;
}

export interface ChatSendMessage {
  chatType: 1 | 2;
  content: string;
  contentType?: 1 | 2;
  conversationId?: string;
  recvId?: string;
  /** Set by the client when absent; the broker echoes it in chat_ack and drops a retried duplicate. */
  clientMsgId?: string;
}

export interface ChatAck {
  type: "chat_ack";
  msgId: number;
  conversationId: string;
  clientMsgId: string;
  timestamp: string;
}

export interface ChatMessage {
  conversationId: string;
  sendId: string;
  recvId?: string;
  chatType: 1 | 2;
  content: string;
  contentType: 1 | 2;
  msgId: number;
  timestamp: string;
}

export interface HistoryPage {
  type: "history";
  conversationId: string;
  hasMore: boolean;
  messages: ChatMessage[];
}

export interface FrameLogEntry {
  dir: "in" | "out";
  data: string;
  time: number;
}

export interface BrokerClientEvents {
  status: ConnectionStatus;
  attempt: number;
  message: BrokerMessage;
  chat: ChatMessage;
  read: BrokerMessage;
  servererror: BrokerMessage;
  close: CloseInfo & { reason: string };
  /** Anything that went wrong; after two closes with 1006 before the socket opened, an Error
   *  whose code is "UPGRADE_REFUSED" (the broker answers but refused the upgrade: the origin
   *  allow-list or a limit; the message names the setting) or "UNREACHABLE". */
  error: unknown;
  frame: FrameLogEntry;
  online: undefined;
  offline: undefined;
  transport: Transport;
  token_expiring: { type: "token_expiring"; expiresAt: string };
  token_refreshed: { type: "token_refreshed"; expiresAt: string | null };
}

export class BrokerClient {
  constructor(url: string, options?: BrokerClientOptions);
  readonly url: string;
  readonly status: ConnectionStatus;
  /** The transport in use (or to be tried next). */
  readonly transport: Transport;
  readonly connected: boolean;
  /** Attempts since the last successful connection. */
  readonly attempts: number;
  /** When the next attempt is due (ms since epoch), or null. */
  readonly nextAttemptAt: number | null;
  readonly nextAttemptIn: number | null;
  readonly lastClose: (CloseInfo & { reason: string }) | null;
  readonly userId: string | null;
  /** When the current token expires (ISO time), once the broker said so. */
  readonly tokenExpiresAt: string | null;
  /** Tokens renewed on the open connection. */
  readonly refreshes: number;
  readonly online: boolean;
  readonly visible: boolean;

  on<K extends keyof BrokerClientEvents>(type: K, listener: (value: BrokerClientEvents[K]) => void): () => void;
  connect(): void;
  disconnect(): void;
  drop(): void;
  setOnline(online: boolean): void;
  setVisible(visible: boolean): void;
  send(message: BrokerMessage): boolean;

  joinJob(jobId: string, handlers?: JobHandlers, options?: { lastSeq?: number }): JobSubscription;
  leaveJob(jobId: string, handlers?: JobHandlers): void;

  /** Resolves with the chat_ack once stored; rejects on an error for it, on disconnect()
   *  or a stop, when the outbox is full, or when the client was never connected. */
  sendChat(message: ChatSendMessage): Promise<ChatAck>;
  /** Rejects when not connected, or when the connection closes before the answer. */
  history(conversationId: string, options?: { beforeMsgId?: number; limit?: number }): Promise<HistoryPage>;
  markRead(conversationId: string, msgId: number): boolean;
}
