"""The durable store behind one actor: SQLite (embedded default) and PostgreSQL (clusters), the callers' side they share (:mod:`.actor`), and the SQL both speak."""
