"""Data plane: ingest into content-hashed dataset versions, validation suites, splits."""
