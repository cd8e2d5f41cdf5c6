"""Prompt rendering (chat messages with SID-grounded items), the JSON answer format and its checker."""

from components.prompts.answer import (
    DUPLICATE,
    END_OF_TEXT_MARKERS,
    FAILURE_CLASSES,
    OMISSION,
    OUT_OF_SET,
    UNPARSEABLE,
    WRONG_LENGTH,
    ParsedAnswer,
    parse_answer,
    ranking_or_fallback,
)
from components.prompts.render import (
    RANKING_KEY,
    REASONING_KEY,
    CatalogItem,
    ItemCatalog,
    answer_candidates,
    render_answer,
    render_example,
    render_messages,
)

__all__ = [
    "DUPLICATE",
    "END_OF_TEXT_MARKERS",
    "FAILURE_CLASSES",
    "OMISSION",
    "OUT_OF_SET",
    "RANKING_KEY",
    "REASONING_KEY",
    "UNPARSEABLE",
    "WRONG_LENGTH",
    "CatalogItem",
    "ItemCatalog",
    "ParsedAnswer",
    "answer_candidates",
    "parse_answer",
    "ranking_or_fallback",
    "render_answer",
    "render_example",
    "render_messages",
]
