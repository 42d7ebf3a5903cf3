"""The HTTP side of the one port: the front that routes plain requests and upgrades, pipelined publishes answered in order, the server API, and the static client and console files."""
