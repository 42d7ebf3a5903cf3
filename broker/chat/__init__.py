"""Chat: conversations (store before ack), ordered local delivery and cross-node relay, offline replay pacing, send retries, and the per-connection delivery tracker."""
