from __future__ import annotations

import json

import pandas as pd
import pytest

from components.config import PromptConfig
from components.prompts import ItemCatalog, answer_candidates, parse_answer, render_answer, render_example, render_messages
from components.semantic_ids.format import sid_string

from .fakes import item_frames

HISTORY = ["i0", "i1", "i2"]
CANDIDATES = ["i9", "i3", "i7", "i4", "i11", "i5", "i10", "i6", "i8", "i1"]


def test_catalog_maps_both_ways(catalog: ItemCatalog) -> None:
    item = catalog.item("i4")
    assert item.sid == sid_string([4, 1, 7, 0])
    assert catalog.item_id(item.sid) == "i4"
    assert item.leaf_category == "Nail Polish"
    assert item.brand is None and catalog.item("i5").brand == "OPI"
    assert "\n" not in item.title
    assert len(catalog) == 12 and "i4" in catalog and "missing" not in catalog


def test_catalog_keeps_only_items_with_a_sid() -> None:
    items, sids = item_frames()
    catalog = ItemCatalog.from_frames(items, sids.iloc[:5])
    assert len(catalog) == 5
    with pytest.raises(KeyError, match="i7"):
        catalog.sid("i7")


@pytest.mark.parametrize(
    ("sids_update", "message"),
    [
        ({"item_id": "ghost"}, "not in the items frame"),
        ({"sid": "<s_b_1><s_a_2>"}, "malformed SID"),
        ({"sid": sid_string([1, 1, 7, 0])}, "shared"),
    ],
)
def test_catalog_rejects_bad_sids(sids_update: dict[str, str], message: str) -> None:
    items, sids = item_frames()
    sids = sids.copy()
    for column, value in sids_update.items():
        sids.loc[0, column] = value
    with pytest.raises(ValueError, match=message):
        ItemCatalog.from_frames(items, sids)


def test_prompt_lists_history_then_candidates_in_order(catalog: ItemCatalog) -> None:
    messages = render_messages(HISTORY, CANDIDATES, catalog, PromptConfig())
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert "10 candidate" in system and '"reasoning"' in system and '"ranking"' in system
    history_part, candidate_part = user.split("Candidates")
    lines = candidate_part.splitlines()[1:]
    assert [line.split(" ")[0] for line in lines] == catalog.sids(CANDIDATES)
    history_lines = history_part.splitlines()[1:]
    assert [line.split(" ")[0] for line in history_lines] == catalog.sids(HISTORY)
    assert all(line.endswith(catalog.item(item_id).leaf_category) for line, item_id in zip(lines, CANDIDATES))


def test_index_form_numbers_candidates_and_writes_positions(catalog: ItemCatalog) -> None:
    cfg = PromptConfig(answer_ids="index")
    system, user = (m["content"] for m in render_messages(HISTORY, CANDIDATES, catalog, cfg))
    assert "10 candidate numbers" in system and "by their number" in system and "SID" not in system
    history_part, candidate_part = user.split("Candidates")
    lines = candidate_part.splitlines()[1:]
    assert lines == [f"{k}. {catalog.sid(item)} {catalog.item(item).leaf_category}" for k, item in enumerate(CANDIDATES, 1)]
    assert not any(line[0].isdigit() for line in history_part.splitlines())

    sids = catalog.sids(CANDIDATES)
    ranking = [sids[4], *sids[:4], *sids[5:]]
    text = render_answer("r", ranking, answer_candidates(sids, cfg))
    assert json.loads(text)["ranking"] == [5, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert parse_answer(text, sids).ranking == ranking
    assert answer_candidates(sids, PromptConfig()) is None


def test_index_form_rejects_a_ranked_stranger(catalog: ItemCatalog) -> None:
    sids = catalog.sids(CANDIDATES)
    with pytest.raises(ValueError, match="not among the candidates"):
        render_answer("r", [catalog.sid("i0"), *sids[1:]], sids)


def test_prompt_shows_titles_only_when_asked(catalog: ItemCatalog) -> None:
    without = render_messages(HISTORY, CANDIDATES, catalog, PromptConfig(include_title=False))[1]["content"]
    assert "Title of item" not in without
    cfg = PromptConfig(include_title=True, max_title_chars=20)
    with_titles = render_messages(HISTORY, CANDIDATES, catalog, cfg)[1]["content"]
    for item_id in HISTORY + CANDIDATES:
        assert f"| {catalog.item(item_id).title[:20].rstrip()}\n" in with_titles + "\n"
    assert "rather long" not in with_titles


def test_prompt_shows_brands_only_when_asked(catalog: ItemCatalog) -> None:
    plain = render_messages(HISTORY, CANDIDATES, catalog, PromptConfig())[1]["content"]
    assert " by " not in plain
    cfg = PromptConfig(include_brand=True, include_title=True, max_title_chars=20)
    lines = render_messages(HISTORY, CANDIDATES, catalog, cfg)[1]["content"].splitlines()
    for item_id in HISTORY + CANDIDATES:
        item = catalog.item(item_id)
        line = next(line for line in lines if item.sid in line)
        expected = [item.leaf_category] + ([f"by {item.brand}"] if item.brand else []) + [item.title[:20].rstrip()]
        assert line.split(f"{item.sid} ")[1] == " | ".join(expected)


def test_shared_brands_are_marked_on_candidates_only(catalog: ItemCatalog) -> None:
    history_brands = {catalog.item(h).brand for h in HISTORY} - {None}
    cfg = PromptConfig(include_brand=True, mark_shared_brand=True)
    history_part, candidate_part = render_messages(HISTORY, CANDIDATES, catalog, cfg)[1]["content"].split("Candidates")
    assert ", in history" not in history_part
    marked = [item for item, line in zip(CANDIDATES, candidate_part.splitlines()[1:]) if line.endswith(", in history")]
    assert marked == [item for item in CANDIDATES if catalog.item(item).brand in history_brands] != []
    unmarked = render_messages(HISTORY, CANDIDATES, catalog, PromptConfig(include_brand=True))[1]["content"]
    assert ", in history" not in unmarked
    with pytest.raises(ValueError, match="include_brand"):
        PromptConfig(mark_shared_brand=True)


def test_shared_brands_are_listed_most_shared_first() -> None:
    items, sids = item_frames()
    items["brand"] = [{1: "OPI", 3: "OPI", 5: "OPI", 2: "Essie", 7: "Essie", 9: "Essie", 11: "Revlon"}.get(k) for k in range(12)]
    catalog = ItemCatalog.from_frames(items, sids)
    history = ["i1", "i2", "i3", "i4"]  # OPI twice, Essie once, one item without a brand
    cfg = PromptConfig(include_brand=True, list_shared_brands=True, answer_ids="index")
    last_line = render_messages(history, CANDIDATES, catalog, cfg)[1]["content"].splitlines()[-1]
    # OPI candidates at positions 2, 6 and 10 (two history items each), then Essie at 1 and 3.
    assert last_line == "Candidates by a brand in the history (history items with it): 2 (2), 6 (2), 10 (2), 1 (1), 3 (1)"
    by_sid = render_messages(history, CANDIDATES, catalog, cfg.model_copy(update={"answer_ids": "sid"}))[1]["content"]
    assert by_sid.endswith(f"{catalog.sid('i3')} (2), {catalog.sid('i5')} (2), {catalog.sid('i1')} (2), {catalog.sid('i9')} (1), {catalog.sid('i7')} (1)")
    assert render_messages(["i4", "i11"], CANDIDATES[:4], catalog, cfg)[1]["content"].endswith("(history items with it): none")
    unlisted = render_messages(history, CANDIDATES, catalog, PromptConfig(include_brand=True))[1]["content"]
    assert "history items with it" not in unlisted
    with pytest.raises(ValueError, match="list_shared_brands needs prompts.include_brand"):
        PromptConfig(list_shared_brands=True)


def test_co_purchases_are_listed_last_most_first(catalog: ItemCatalog) -> None:
    cfg = PromptConfig(list_co_purchases=True, answer_ids="index")
    counts = [0, 3, 0, 12, 0, 3, 0, 0, 1, 0]
    last_line = render_messages(HISTORY, CANDIDATES, catalog, cfg, counts)[1]["content"].splitlines()[-1]
    # Most co-purchases first, ties in pre-rank order.
    assert last_line == "Candidates co-bought with history items (other shoppers): 4 (12), 2 (3), 6 (3), 9 (1)"
    by_sid = render_messages(HISTORY, CANDIDATES, catalog, cfg.model_copy(update={"answer_ids": "sid"}), counts)[1]["content"]
    assert by_sid.endswith(f"(other shoppers): {catalog.sid('i4')} (12), {catalog.sid('i3')} (3), {catalog.sid('i5')} (3), {catalog.sid('i8')} (1)")
    assert render_messages(HISTORY, CANDIDATES, catalog, cfg, [0] * 10)[1]["content"].endswith("(other shoppers): none")
    # Off by default (the papers' prompt); on, the counts are required and must match the candidates.
    assert "co-bought" not in render_messages(HISTORY, CANDIDATES, catalog, PromptConfig(), counts)[1]["content"]
    with pytest.raises(ValueError, match="co-purchase counts"):
        render_messages(HISTORY, CANDIDATES, catalog, cfg)
    with pytest.raises(ValueError, match="9 co-purchase counts for 10 candidates"):
        render_messages(HISTORY, CANDIDATES, catalog, cfg, counts[:9])
    example = {"history": HISTORY, "candidates": CANDIDATES, "co_purchases": counts}
    assert render_example(example, catalog, cfg) == render_messages(HISTORY, CANDIDATES, catalog, cfg, counts)


def test_prompt_names_an_unknown_item(catalog: ItemCatalog) -> None:
    with pytest.raises(KeyError, match="nope"):
        render_messages(["nope"], CANDIDATES, catalog, PromptConfig())


def test_answer_is_compact_json_reasoning_first(catalog: ItemCatalog) -> None:
    sids = catalog.sids(CANDIDATES)
    text = render_answer("Prefers nail polish — ünïcode kept.", sids[::-1])
    assert text.startswith('{"reasoning":"Prefers nail polish — ünïcode kept.","ranking":["')
    assert ", " not in text.split('"ranking"')[1]
    assert json.loads(text)["ranking"] == sids[::-1]


def test_rendered_answer_round_trips(catalog: ItemCatalog) -> None:
    sids = catalog.sids(CANDIDATES)
    ranking = sids[3:] + sids[:3]
    parsed = parse_answer(render_answer('Step 1: "quotes" and\nnewlines.', ranking), sids)
    assert parsed.valid and parsed.failures == ()
    assert parsed.ranking == ranking
    assert parsed.reasoning == 'Step 1: "quotes" and\nnewlines.'


def test_catalog_reads_parquet_style_columns() -> None:
    # Parquet list columns come back as numpy arrays and missing brands as NaN.
    items, sids = item_frames(2)
    items["categories"] = items["categories"].map(lambda path: pd.array(path).to_numpy())
    items["brand"] = [float("nan"), "OPI"]
    catalog = ItemCatalog.from_frames(items, sids)
    assert catalog.item("i0").categories == ("Makeup", "Nails", "Nail Polish")
    assert catalog.item("i0").brand is None
