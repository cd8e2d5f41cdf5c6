"""Prefect flows: thin wrappers that add caching, retries, logging and artifacts to components."""
