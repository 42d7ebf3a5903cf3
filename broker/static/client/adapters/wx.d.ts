import type { BrokerClient, BrokerClientOptions, WebSocketConstructor } from "../broker-client.js";

/** The part of the mini-program `wx` object the adapter uses. */
export interface WxSocketTask {
  onOpen(callback: (result: object) => void): void;
  onMessage(callback: (result: { data: string | ArrayBuffer }) => void): void;
  onClose(callback: (result: { code: number; reason: string }) => void): void;
  onError(callback: (result: { errMsg: string }) => void): void;
  send(options: { data: string | ArrayBuffer }): void;
  close(options: { code?: number; reason?: string }): void;
}

export interface Wx {
  connectSocket(options: { url: string; header?: Record<string, string>; protocols?: string[];
    fail?: (error: { errMsg: string }) => void }): WxSocketTask;
  onAppShow?(callback: () => void): void;
  onAppHide?(callback: () => void): void;
  onNetworkStatusChange?(callback: (result: { isConnected: boolean; networkType: string }) => void): void;
}

export function wxWebSocket(wx: Wx, connectOptions?: { header?: Record<string, string>; protocols?: string[] }):
  WebSocketConstructor;
export function followWxLifecycle(wx: Wx, client: BrokerClient): void;
export function createWxClient(wx: Wx, url: string, options?: BrokerClientOptions): BrokerClient;
