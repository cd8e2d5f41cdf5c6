"""The GR2 chat prompt and answer text (paper.md section 1, "Prompt layout").

A prompt is two chat messages: a system message that states the re-ranking task, the three
reasoning steps and the JSON answer format, then a user message with the purchase history
(oldest first) and the candidates in pre-rank order. Every item is shown by its SID and its leaf
category, plus its brand and its title when ``PromptConfig.include_brand`` and ``include_title`` are
set: titles are most of a prompt's length, and on CPU every token costs training and decoding time.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from components.config import PromptConfig
from components.semantic_ids.format import parse_sid

# The answer keys, in the order the model writes them: reasoning first, so the ranking is
# conditioned on the reasoning that precedes it.
REASONING_KEY = "reasoning"
RANKING_KEY = "ranking"


def _system_message(n: int, answer_ids: str) -> str:
    # The analyst persona frames the task as ranking, not persuasion; items are cited by SID and
    # the reasoning follows three fixed steps (GR2 prompt principles 1, 4 and 5).
    by_sid = answer_ids == "sid"
    entries = f"the {n} candidate SIDs" if by_sid else f"the {n} candidate numbers"
    citation = "Cite items only by their SID." if by_sid else "Cite candidates only by their number."
    return (
        f"You are a re-ranking analyst for an online store. Re-order the {n} candidate items so that "
        f"the item the user is most likely to buy next comes first. {citation} "
        "Reason in three steps: 1) patterns in the purchase history; 2) complementary categories and "
        "brands; 3) final selection. Answer with JSON only: "
        f'{{"{REASONING_KEY}": "<the three steps>", "{RANKING_KEY}": [<{entries}, best first>]}}'
    )


@dataclass(frozen=True)
class CatalogItem:
    """What a prompt, a trace teacher or the service needs to know about one item."""

    item_id: str
    sid: str
    title: str
    brand: str | None
    categories: tuple[str, ...]

    @property
    def leaf_category(self) -> str | None:
        """The most specific category (the last one of the path), or None for an uncategorised item."""
        return self.categories[-1] if self.categories else None


class ItemCatalog:
    """Item metadata keyed by item id, and the reverse map from SID to item id."""

    def __init__(self, items: Iterable[CatalogItem]) -> None:
        self._by_item_id: dict[str, CatalogItem] = {}
        self._item_id_by_sid: dict[str, str] = {}
        for item in items:
            if item.item_id in self._by_item_id:
                raise ValueError(f"item {item.item_id!r} appears twice in the catalog")
            # A shared SID would make an answer ambiguous: the reverse map must be one-to-one.
            if item.sid in self._item_id_by_sid:
                raise ValueError(
                    f"SID {item.sid} is shared by items {self._item_id_by_sid[item.sid]!r} and {item.item_id!r}"
                )
            self._by_item_id[item.item_id] = item
            self._item_id_by_sid[item.sid] = item.item_id

    @classmethod
    def from_frames(cls, items_df: pd.DataFrame, sids_df: pd.DataFrame) -> ItemCatalog:
        """Join a dataset version's items with their semantic IDs.

        Args:
            items_df: item_id, title, brand, categories (a list per item, broadest first).
            sids_df: item_id, sid (surface form, see ``components.semantic_ids.format``).

        Returns:
            A catalog of the items that have a SID.

        Raises:
            ValueError: a SID that does not parse, belongs to an unknown item, or is shared.
        """
        unknown = set(sids_df["item_id"]) - set(items_df["item_id"])
        if unknown:
            raise ValueError(f"{len(unknown)} SIDs belong to items not in the items frame, e.g. {sorted(unknown)[:3]}")
        merged = items_df.merge(sids_df[["item_id", "sid"]], on="item_id", how="inner", validate="one_to_one")
        items = []
        for row in merged.itertuples(index=False):
            if parse_sid(row.sid) is None:
                raise ValueError(f"item {row.item_id!r} has a malformed SID {row.sid!r}")
            items.append(
                CatalogItem(
                    item_id=row.item_id,
                    sid=row.sid,
                    title=_clean_text(row.title),
                    brand=_clean_text(row.brand) or None,
                    # Parquet list columns come back as arrays, missing ones as None.
                    categories=tuple(row.categories) if row.categories is not None else (),
                )
            )
        return cls(items)

    def __len__(self) -> int:
        return len(self._by_item_id)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_item_id

    @property
    def item_ids(self) -> list[str]:
        """Every item id, in catalog order."""
        return list(self._by_item_id)

    def item(self, item_id: str) -> CatalogItem:
        """The catalog entry of ``item_id``; KeyError names the item when it has none."""
        try:
            return self._by_item_id[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the catalog (no SID?)") from None

    def sid(self, item_id: str) -> str:
        """The SID of ``item_id``."""
        return self.item(item_id).sid

    def sids(self, item_ids: Sequence[str]) -> list[str]:
        """The SIDs of ``item_ids``, in the same order."""
        return [self.sid(item_id) for item_id in item_ids]

    def item_id(self, sid: str) -> str:
        """The item that ``sid`` names; KeyError when no item has it."""
        try:
            return self._item_id_by_sid[sid]
        except KeyError:
            raise KeyError(f"SID {sid!r} names no item in the catalog") from None


def _clean_text(value: object) -> str:
    """Collapse whitespace (titles hold newlines and runs of spaces); missing values become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split())


def _item_line(item: CatalogItem, cfg: PromptConfig, history_brands: Collection[str] = ()) -> str:
    """``<sid> <leaf category>[ | by <brand>[, in history]][ | <title>]``: the SID tokens delimit themselves."""
    fields = [item.leaf_category or ""]
    if cfg.include_brand and item.brand:
        shared = cfg.mark_shared_brand and item.brand in history_brands
        fields.append(f"by {item.brand}" + (", in history" if shared else ""))
    if cfg.include_title and item.title:
        fields.append(item.title[: cfg.max_title_chars].rstrip())
    return f"{item.sid} {' | '.join(fields)}".rstrip()


def _shared_brand_line(history_brands: Counter[str], candidates: Sequence[str], items: ItemCatalog, answer_ids: str) -> str:
    """The candidates whose brand some history item has, most such items first, then in pre-rank order."""
    shared = []
    for position, item_id in enumerate(candidates, start=1):
        count = history_brands.get(items.item(item_id).brand or "", 0)
        if count:
            shared.append((-count, position, f"{position if answer_ids == 'index' else items.sid(item_id)} ({count})"))
    listed = ", ".join(entry for *_, entry in sorted(shared)) or "none"
    return f"Candidates by a brand in the history (history items with it): {listed}"


def _co_purchase_line(co_purchases: Sequence[int], candidates: Sequence[str], items: ItemCatalog, answer_ids: str) -> str:
    """The candidates other shoppers bought with history items, most such purchases first, then in pre-rank order."""
    if len(co_purchases) != len(candidates):
        raise ValueError(f"{len(co_purchases)} co-purchase counts for {len(candidates)} candidates")
    listed = [
        (-count, position, f"{position if answer_ids == 'index' else items.sid(item_id)} ({count})")
        for position, (item_id, count) in enumerate(zip(candidates, co_purchases), start=1)
        if count > 0
    ]
    return f"Candidates co-bought with history items (other shoppers): {', '.join(e for *_, e in sorted(listed)) or 'none'}"


def render_messages(
    history: Sequence[str],
    candidates: Sequence[str],
    items: ItemCatalog,
    cfg: PromptConfig,
    co_purchases: Sequence[int] | None = None,
) -> list[dict[str, str]]:
    """The chat prompt for one re-ranking example.

    Args:
        history: item ids the user bought, oldest first.
        candidates: the candidate item ids in pre-rank order (best first).
        items: the catalog that gives every item its SID, category and title.
        cfg: whether brands (marked, or listed after the candidates, when the history shares
            them), co-purchases and titles are shown, and how the answer names candidates
            (``index`` numbers the candidate lines from 1).
        co_purchases: per candidate, other shoppers' co-purchases with the history (the examples'
            ``co_purchases`` column, or the service's online features); needed when
            ``cfg.list_co_purchases`` is set.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``; the chat template is the tokenizer's.

    Raises:
        ValueError: no candidates, or ``cfg.list_co_purchases`` without one count per candidate.
    """
    if not candidates:
        raise ValueError("a re-ranking prompt needs at least one candidate")
    if cfg.list_co_purchases and co_purchases is None:
        raise ValueError("prompts.list_co_purchases needs the candidates' co-purchase counts")
    lines = ["Purchase history (oldest first):"]
    lines += [_item_line(items.item(item_id), cfg) for item_id in history]
    history_brands = Counter(b for b in (items.item(item_id).brand for item_id in history) if b)
    lines.append("Candidates (pre-ranked, best first):")
    for position, item_id in enumerate(candidates, start=1):
        line = _item_line(items.item(item_id), cfg, history_brands)
        lines.append(f"{position}. {line}" if cfg.answer_ids == "index" else line)
    if cfg.list_shared_brands:
        lines.append(_shared_brand_line(history_brands, candidates, items, cfg.answer_ids))
    if cfg.list_co_purchases:
        lines.append(_co_purchase_line(co_purchases, candidates, items, cfg.answer_ids))
    return [
        {"role": "system", "content": _system_message(len(candidates), cfg.answer_ids)},
        {"role": "user", "content": "\n".join(lines)},
    ]


def render_example(example: Mapping[str, Any], items: ItemCatalog, cfg: PromptConfig) -> list[dict[str, str]]:
    """``render_messages`` of one re-ranking example (a row with ``history``, ``candidates`` and
    ``co_purchases``, as in examples.parquet and traces.parquet)."""
    co_purchases = example.get("co_purchases") if cfg.list_co_purchases else None
    return render_messages(
        list(example["history"]), list(example["candidates"]), items, cfg, None if co_purchases is None else list(co_purchases)
    )


def render_prompts(tokenizer: Any, examples: pd.DataFrame, catalog: ItemCatalog, cfg: PromptConfig) -> list[str]:
    """Chat-templated prompts, generation prompt included, one per example."""
    return [
        tokenizer.apply_chat_template(render_example(example, catalog, cfg), tokenize=False, add_generation_prompt=True)
        for example in examples.to_dict("records")
    ]


def render_answer(reasoning: str, ranking_sids: Sequence[str], candidate_sids: Sequence[str] | None = None) -> str:
    """The assistant message: compact JSON, reasoning before ranking.

    Args:
        reasoning: the reasoning trace.
        ranking_sids: the re-ordered candidate SIDs, best first.
        candidate_sids: the candidates in prompt (pre-rank) order, for the ``index`` answer form:
            the ranking is then written as each SID's 1-based position in this list. None writes
            the SIDs themselves.

    Returns:
        ``{"reasoning":"...","ranking":["<s_a_..>...",...]}`` (or ``[3,1,...]``) with no optional
        whitespace (fewer tokens) and non-ASCII text kept as is rather than escaped.

    Raises:
        ValueError: with ``candidate_sids``, a ranked SID that is not a candidate.
    """
    ranking: list[str] | list[int] = list(ranking_sids)
    if candidate_sids is not None:
        positions = {sid: position for position, sid in enumerate(candidate_sids, start=1)}
        missing = [sid for sid in ranking_sids if sid not in positions]
        if missing:
            raise ValueError(f"ranked SIDs {missing[:3]} are not among the candidates")
        ranking = [positions[sid] for sid in ranking_sids]
    return json.dumps({REASONING_KEY: reasoning, RANKING_KEY: ranking}, ensure_ascii=False, separators=(",", ":"))


def answer_candidates(candidate_sids: Sequence[str], cfg: PromptConfig) -> Sequence[str] | None:
    """What ``render_answer`` takes as ``candidate_sids`` under ``cfg``'s answer form."""
    return candidate_sids if cfg.answer_ids == "index" else None
