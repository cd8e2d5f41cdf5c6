"""SID mid-training examples: the texts, no held-out item, and the loss on the target only."""

from __future__ import annotations

import json

from components.prompts import CatalogItem, ItemCatalog
from components.prompts.midtrain import TextPair, candidate_recall_examples, caption_examples, next_item_examples
from components.prompts.render import render_answer
from components.training.midtrain import encode_pairs
from components.training.sft import ANSWER, PROMPT, collate
from tests.unit.training.test_sft import catalog, make_catalog, tokenizer  # noqa: F401 (fixtures)


def test_next_item_examples_walk_every_position_with_a_bounded_history() -> None:
    items = make_catalog()
    pairs = next_item_examples([["i0", "i1", "i2", "i3"]], items, history_max=2)
    sid = items.sid
    assert pairs == [
        TextPair(f"Purchase history (oldest first): {sid('i0')}\nNext item:\n", sid("i1")),
        TextPair(f"Purchase history (oldest first): {sid('i0')} {sid('i1')}\nNext item:\n", sid("i2")),
        TextPair(f"Purchase history (oldest first): {sid('i1')} {sid('i2')}\nNext item:\n", sid("i3")),
    ]


def test_next_item_examples_never_use_a_held_out_item() -> None:
    items = make_catalog()
    # Leave-one-out: each user's last two items are validation and test; training sees the rest.
    full = [[f"i{k}" for k in range(start, start + 5)] for start in (0, 5)]
    held_out = {items.sid(item_id) for sequence in full for item_id in sequence[-2:]}
    pairs = next_item_examples([sequence[:-2] for sequence in full], items, history_max=20)
    assert len(pairs) == 4
    assert not any(sid in pair.prompt + pair.target for pair in pairs for sid in held_out)


def test_caption_examples_both_directions() -> None:
    items = ItemCatalog(
        [
            CatalogItem("a", "<s_a_1><s_b_2>", "Red Polish", None, ("Makeup", "Nails")),
            CatalogItem("b", "<s_a_3><s_b_4>", "", None, ("Skin Care",)),
            CatalogItem("c", "<s_a_5><s_b_6>", "", None, ()),
        ]
    )
    assert caption_examples(items, ["a", "b", "c"]) == [
        TextPair("Item <s_a_1><s_b_2>\nDescription:\n", "Makeup > Nails | Red Polish"),
        TextPair("Item <s_a_3><s_b_4>\nDescription:\n", "Skin Care"),
    ]
    assert caption_examples(items, ["a"], reverse=True)[1:] == [
        TextPair("Description: Makeup > Nails | Red Polish\nItem:\n", "<s_a_1><s_b_2>")
    ]


def test_encoded_pairs_weigh_the_target_and_end_token_only(tokenizer) -> None:  # noqa: F811
    pairs = [
        TextPair("Item <s_a_1><s_b_2>\nDescription:\n", "Makeup > Nails | Nail Polish"),
        TextPair("Next:\n", "<s_a_3><s_b_4>"),
    ]
    examples = encode_pairs(tokenizer, pairs, max_length=64)
    for pair, example in zip(pairs, examples):
        prompt = [t for t, s in zip(example.input_ids, example.segments) if s == PROMPT]
        target = [t for t, w in zip(example.input_ids, example.loss_weights) if w == 1.0]
        assert set(example.loss_weights) == {0.0, 1.0} and set(example.segments) == {PROMPT, ANSWER}
        assert tokenizer.decode(prompt) == pair.prompt
        assert tokenizer.decode(target) == pair.target + tokenizer.eos_token
    batch = collate(examples, tokenizer.pad_token_id)
    assert batch["num_tokens"].tolist() == [len(tokenizer(p.target)["input_ids"]) + 1 for p in pairs]


def test_candidate_recall_lists_the_prompt_sids_as_the_answer_json() -> None:
    catalog = make_catalog()
    [pair] = candidate_recall_examples([["i3", "i0", "i7"]], catalog)
    sids = catalog.sids(["i3", "i0", "i7"])
    assert json.loads(pair.target) == sids
    # The target is written exactly as the answer's ranking list is.
    assert pair.target in render_answer("r", sids)
    for sid, item in zip(sids, ["i3", "i0", "i7"]):
        assert f"{sid} {catalog.item(item).leaf_category}" in pair.prompt
