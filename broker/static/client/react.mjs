// react.mjs: useWebSocket, the React hook over BrokerClient (no JSX: no build step).
// React is a peer dependency. One socket per page: hooks with the same url and token
// share one client, and a release waits a tick, so StrictMode's mount-unmount-mount
// keeps the socket it opened instead of opening a second one.
import { useCallback, useEffect, useRef, useState } from "react";
import { BrokerClient } from "./broker-client.mjs";

let defaults = {};
const shared = new Map(); // url + token -> {client, users, timer}

/** Options every useWebSocket on the page starts from: {url, token, getToken, ...}. */
export function configureBroker(options) {
  defaults = { ...defaults, ...options };
}

function defaultUrl() {
  const location = globalThis.location;
  return location ? (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" : "";
}

function acquire(key, url, options) {
  let entry = shared.get(key);
  if (!entry) {
    entry = { client: new BrokerClient(url, options), users: 0, timer: null };
    shared.set(key, entry);
  }
  clearTimeout(entry.timer);
  entry.users++;
  return entry;
}

function release(key, entry) {
  if (--entry.users) return;
  entry.timer = setTimeout(() => {
    if (entry.users || shared.get(key) !== entry) return;
    shared.delete(key);
    entry.client.disconnect();
  }, 0);
}

// The hook's statuses are those existing front ends expect: "reconnecting" is "connecting".
const hookStatus = (status) => (status === "reconnecting" ? "connecting" : status);

/**
 * useWebSocket({jobId, onJobStatusUpdate, onStageCompleted, onJobError, onConnectionChange, onStatusChange, onError})
 * -> {connectionStatus, reconnectAttempts, connect, disconnect, client, lastClose, transport}
 *
 * onConnectionChange(connected) gets a boolean, as the hook's original contract says
 * (true once connected, false when that ends; a status string would be truthy even
 * for "disconnected"); onStatusChange(status) gets the status string.
 */
export function useWebSocket(options = {}) {
  const latest = useRef(options);
  latest.current = options;
  const reported = useRef(null); // the last status given to onStatusChange
  const reportedConnected = useRef(null); // the last boolean given to onConnectionChange
  const [client, setClient] = useState(null);
  const [state, setState] = useState({ connectionStatus: "disconnected", reconnectAttempts: 0, lastClose: null,
    transport: null });
  const merged = { ...defaults, ...options };
  const url = merged.url || defaultUrl();
  const token = merged.token;
  const { jobId } = options;

  useEffect(() => {
    const settings = { ...defaults, ...latest.current };
    const getToken = settings.getToken && (() => ({ ...defaults, ...latest.current }).getToken());
    const key = url + "\n" + (token || "");
    const entry = acquire(key, url, { ...settings, url: undefined, getToken });
    const instance = entry.client;
    const update = () => {
      const status = hookStatus(instance.status);
      setState({ connectionStatus: status, reconnectAttempts: instance.attempts, lastClose: instance.lastClose,
        transport: instance.transport });
      if (status !== reported.current) {
        reported.current = status;
        const { onStatusChange } = latest.current;
        if (onStatusChange) onStatusChange(status);
      }
      const connected = status === "connected";
      if (connected !== reportedConnected.current) {
        reportedConnected.current = connected;
        const { onConnectionChange } = latest.current;
        if (onConnectionChange) onConnectionChange(connected);
      }
    };
    const reportError = (error) => {
      const { onError } = latest.current;
      if (onError) onError(error);
    };
    const unsubscribe = [
      instance.on("status", update),
      instance.on("attempt", update),
      instance.on("transport", update),
      instance.on("error", reportError),
      instance.on("servererror", reportError),
    ];
    setClient(instance);
    if (latest.current.autoConnect !== false) instance.connect();
    update();
    return () => {
      unsubscribe.forEach((off) => off());
      release(key, entry);
    };
  }, [url, token]);

  useEffect(() => {
    if (!client || !jobId) return undefined;
    const forward = (name) => (...args) => {
      const handler = latest.current[name];
      if (handler) handler(...args);
    };
    const subscription = client.joinJob(jobId, {
      onJobStatusUpdate: forward("onJobStatusUpdate"),
      onStageCompleted: forward("onStageCompleted"),
      onJobError: forward("onJobError"),
      onEvent: forward("onEvent"),
    });
    return () => subscription.leave();
  }, [client, jobId]);

  const connect = useCallback(() => client && client.connect(), [client]);
  const disconnect = useCallback(() => client && client.disconnect(), [client]);
  return { ...state, connect, disconnect, client };
}
