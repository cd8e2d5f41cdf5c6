"""Decoding for the re-ranker's language model: batched autoregressive generation with a KV cache."""

from components.decoding.ar import Generation, default_stop_token_ids, generate

__all__ = ["Generation", "default_stop_token_ids", "generate"]
