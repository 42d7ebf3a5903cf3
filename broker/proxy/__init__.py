"""Authenticating proxy routes: a browser's WebSocket relayed to an upstream API with the credentials the broker holds."""
