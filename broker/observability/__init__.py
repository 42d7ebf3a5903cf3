"""What the broker tells its operators: Prometheus metrics (one registry per broker) and the log filter that keeps secrets out of every record."""
