"""The re-ranker's language model: a BPE tokenizer trained on the dataset's text with one token per
SID code, a Qwen3 model built from a size preset or a local pretrained causal LM, and
self-describing checkpoints."""

from components.modeling.factory import (
    PRESETS,
    build_model,
    count_parameters,
    load_model,
    load_pretrained,
    save_model,
)
from components.modeling.tokenizer import MASK_TOKEN, add_reranker_tokens, build_tokenizer

__all__ = [
    "MASK_TOKEN",
    "PRESETS",
    "add_reranker_tokens",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "load_model",
    "load_pretrained",
    "save_model",
]
