"""The per-connection actor: the connection that owns the wire and timers, login, and the commands a logged-in client may send."""
