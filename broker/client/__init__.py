"""The Python client: reconnects with backoff and resumes its jobs with lastSeq."""
