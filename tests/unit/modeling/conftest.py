"""A small catalog, rendered prompts and answers, and a tokenizer trained on them (built once)."""

from __future__ import annotations

import pytest

from components.config import PromptConfig
from components.modeling.tokenizer import build_tokenizer
from components.prompts import CatalogItem, ItemCatalog, render_answer, render_messages
from components.semantic_ids.format import all_sid_tokens, sid_string

# Four levels of 256 codes: the default SemanticIdConfig (three quantized levels plus uniqueness).
SID_SIZES = [256, 256, 256, 256]
SID_TOKENS = all_sid_tokens(len(SID_SIZES), SID_SIZES)
CATEGORIES = [
    ("Makeup", "Nails", "Nail Polish"),
    ("Skin Care", "Face", "Creams & Moisturizers"),
    ("Hair Care", "Shampoo & Conditioner", "Shampoos"),
    ("Fragrance", "Women's", "Eau de Parfum"),
    ("Makeup", "Eyes", "Mascara"),
]
REASONING = (
    "1) The history is mostly {cat} with repeat purchases of <s_a_{a}><s_b_{b}><s_c_{c}><s_d_0>. "
    "2) Complementary categories: {cat} pairs with brushes and removers; brand loyalty is strong. "
    "3) Final selection: the candidate closest to the latest purchase comes first."
)


def _catalog(count: int = 60) -> ItemCatalog:
    return ItemCatalog(
        CatalogItem(
            item_id=f"i{k}",
            sid=sid_string([(k * 37) % 256, (k * 11) % 256, k % 256, 0]),
            title=f"Item {k}",
            brand=None,
            categories=CATEGORIES[k % len(CATEGORIES)],
        )
        for k in range(count)
    )


def _example(catalog: ItemCatalog, start: int) -> tuple[list[dict[str, str]], str]:
    """A 20-item history and 10 candidates, the default shape of a re-ranking example."""
    ids = [f"i{(start + k) % len(catalog)}" for k in range(30)]
    history, candidates = ids[:20], ids[20:]
    messages = render_messages(history, candidates, catalog, PromptConfig())
    first = catalog.item(candidates[0])
    reasoning = REASONING.format(cat=first.leaf_category, a=start % 256, b=start % 7, c=start % 5)
    return messages, render_answer(reasoning, catalog.sids(list(reversed(candidates))))


@pytest.fixture(scope="session")
def examples() -> list[tuple[list[dict[str, str]], str]]:
    catalog = _catalog()
    return [_example(catalog, start) for start in range(0, 60, 3)]


@pytest.fixture(scope="session")
def tokenizer(examples):
    texts = [m["content"] for messages, _ in examples for m in messages] + [answer for _, answer in examples]
    return build_tokenizer(texts, SID_TOKENS, vocab_size=4000)
