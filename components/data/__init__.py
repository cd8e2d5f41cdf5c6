"""Data plane: ingest into content-hashed dataset versions, validation suites, leave-one-out splits."""
