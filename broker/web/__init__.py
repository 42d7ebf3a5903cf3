"""The HTTP side of the one port: the front that routes plain requests and upgrades, the server API, and the static client and console files."""
