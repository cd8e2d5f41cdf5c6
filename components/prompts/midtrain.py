"""SID mid-training texts: what teaches a model the new SID tokens, as (prompt, target) pairs.

Two of the item-alignment tasks (paper.md section 3):

* sequential preference modeling: the SIDs of a purchase history -> the SID bought next;
* itemic dense captioning: a SID -> its category path and title (and, optionally, back);

plus candidate recall: a candidate block as the re-ranking prompt shows it -> the same SIDs as a
JSON list. They are prompt templates like the re-ranking prompt's, so they live with it: the
tokenizer is trained on them (``components.modeling.build``) and mid-training encodes them
(``components.training.midtrain``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from components.prompts.render import CatalogItem, ItemCatalog


@dataclass(frozen=True)
class TextPair:
    """A prompt and the target text the model must continue it with."""

    prompt: str
    target: str


def next_item_examples(sequences: Iterable[Sequence[str]], catalog: ItemCatalog, history_max: int) -> list[TextPair]:
    """History SIDs -> next SID, one pair for every position after the first of every sequence.

    Args:
        sequences: each user's item ids, oldest first, holding TRAIN positions only: the caller
            cuts off the validation and test items, which would otherwise leak into training.
        catalog: gives every item its SID.
        history_max: most recent history items shown in a prompt.

    Returns:
        ``"Purchase history (oldest first): <sid> <sid> ...\\nNext item:\\n"`` -> ``"<sid>"`` pairs.
    """
    pairs = []
    for sequence in sequences:
        sids = catalog.sids(sequence)
        for position in range(1, len(sids)):
            history = " ".join(sids[max(0, position - history_max) : position])
            pairs.append(TextPair(f"Purchase history (oldest first): {history}\nNext item:\n", sids[position]))
    return pairs


def caption(item: CatalogItem) -> str:
    """``"category > ... > leaf | title"``; either side alone when the item lacks the other."""
    return " | ".join(part for part in (" > ".join(item.categories), item.title) if part)


def caption_examples(catalog: ItemCatalog, item_ids: Iterable[str], reverse: bool = False) -> list[TextPair]:
    """SID -> caption pairs, and caption -> SID pairs when ``reverse`` is set.

    Args:
        catalog: item metadata and SIDs.
        item_ids: the items to caption (e.g. every item of the catalog: captions read item text
            only, never an interaction).
        reverse: also add the text -> SID direction.

    Returns:
        ``"Item <sid>\\nDescription:\\n"`` -> caption pairs, then the reverse pairs if asked for;
        items with neither categories nor title are skipped.
    """
    items = [catalog.item(item_id) for item_id in item_ids]
    described = [(item.sid, text) for item in items if (text := caption(item))]
    pairs = [TextPair(f"Item {sid}\nDescription:\n", text) for sid, text in described]
    if reverse:
        pairs += [TextPair(f"Description: {text}\nItem:\n", sid) for sid, text in described]
    return pairs


def candidate_recall_examples(candidate_lists: Iterable[Sequence[str]], catalog: ItemCatalog) -> list[TextPair]:
    """Candidate block -> its SIDs in the same order, written as the answer's JSON list.

    Args:
        candidate_lists: item ids of each candidate list (training examples' lists: the task shows
            no target and no order but the one in the prompt).
        catalog: SIDs and leaf categories.

    Returns:
        ``"Candidates:\n<sid> <leaf category>\n...\nAs a list:\n"`` -> ``'["<sid>",...]'`` pairs.
    """
    pairs = []
    for candidates in candidate_lists:
        sids = catalog.sids(list(candidates))
        lines = [f"{sid} {catalog.item(item).leaf_category or ''}".rstrip() for sid, item in zip(sids, candidates)]
        pairs.append(TextPair("Candidates:\n" + "\n".join(lines) + "\nAs a list:\n", json.dumps(sids, separators=(",", ":"))))
    return pairs
