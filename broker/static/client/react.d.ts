import type { BrokerClient, BrokerClientOptions, CloseInfo, JobErrorData, JobEventMessage, JobStatusData,
  StageCompletedData, Transport } from "./broker-client.js";

export type HookConnectionStatus = "connecting" | "connected" | "disconnected" | "error";

export interface UseWebSocketOptions extends BrokerClientOptions {
  /** Default: configureBroker's url, else ws(s)://<this host>/ws. */
  url?: string;
  jobId?: string | null;
  onJobStatusUpdate?(data: JobStatusData, message: JobEventMessage<JobStatusData>): void;
  onStageCompleted?(data: StageCompletedData, message: JobEventMessage<StageCompletedData>): void;
  onJobError?(data: JobErrorData, message: JobEventMessage<JobErrorData>): void;
  onEvent?(message: JobEventMessage): void;
  /** true once connected, false when not (reported on each change, and once on mount). */
  onConnectionChange?(connected: boolean): void;
  /** The status string, on each change (and once on mount). */
  onStatusChange?(status: HookConnectionStatus): void;
  onError?(error: unknown): void;
  /** Default true: connect on mount. */
  autoConnect?: boolean;
}

export interface UseWebSocketResult {
  connectionStatus: HookConnectionStatus;
  reconnectAttempts: number;
  connect(): void;
  disconnect(): void;
  /** The page's shared client (null before the first effect ran). */
  client: BrokerClient | null;
  lastClose: (CloseInfo & { reason: string }) | null;
  /** "websocket" or "sse" (the fallback), null before the first effect ran. */
  transport: Transport | null;
}

export function configureBroker(options: UseWebSocketOptions): void;
export function useWebSocket(options?: UseWebSocketOptions): UseWebSocketResult;
