// adapters/wx.mjs: BrokerClient in WeChat mini-programs.
// wx.connectSocket returns a SocketTask (onOpen/onMessage/onClose/onError, send({data}),
// close({code, reason})); wxWebSocket gives it the WebSocket shape the client uses, and
// followWxLifecycle maps app show/hide and network changes to setVisible/setOnline.
import { BrokerClient } from "../broker-client.mjs";

export function wxWebSocket(wx, connectOptions = {}) {
  return class WxWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      const task = (this._task = wx.connectSocket({
        ...connectOptions,
        url,
        fail: (error) => this._closed(1006, error && error.errMsg),
      }));
      task.onOpen(() => {
        this.readyState = 1;
        if (this.onopen) this.onopen({});
      });
      task.onMessage(({ data }) => this.onmessage && this.onmessage({ data }));
      task.onError((error) => this.onerror && this.onerror({ message: error && error.errMsg }));
      task.onClose(({ code, reason } = {}) => this._closed(code, reason));
    }

    _closed(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (this.onclose) this.onclose({ code: code || 1006, reason: reason || "" });
    }

    send(data) {
      this._task.send({ data });
    }

    close(code = 1000, reason = "") {
      if (this.readyState >= 2) return;
      this.readyState = 2;
      this._task.close({ code, reason });
    }
  };
}

export function followWxLifecycle(wx, client) {
  if (wx.onAppShow) wx.onAppShow(() => client.setVisible(true));
  if (wx.onAppHide) wx.onAppHide(() => client.setVisible(false));
  if (wx.onNetworkStatusChange) wx.onNetworkStatusChange(({ isConnected }) => client.setOnline(isConnected));
}

/** A BrokerClient on wx.connectSocket, following the app's lifecycle. */
export function createWxClient(wx, url, options = {}) {
  const client = new BrokerClient(url, { ...options, lifecycle: false, WebSocket: wxWebSocket(wx) });
  followWxLifecycle(wx, client);
  return client;
}
