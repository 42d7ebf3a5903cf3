"""Who a connection is: static tokens, JWTs with pinned algorithms, API keys, and the login keys the hub files users under."""
