from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from components.config import AnalystWeights, ConfigError, load_config
from components.prompts.render import ItemCatalog
from components.semantic_ids.format import SID_TOKEN_RE
from components.traces import AnalystStats, AnalystTeacher, trace_length, training_interactions
from components.traces.analyst import STEP_TITLES

SID = r"((?:<s_[a-h]_\d+>)+)"
CATEGORY_CLAIM = re.compile(rf"(\d+) of (\d+) history items (?:is|are) (?!by )([^,]+), most recently {SID}\.")
BRAND_CLAIM = re.compile(rf"(\d+) of (\d+) history items (?:is|are) by ([^,]+), most recently {SID}\.")
CO_CLAIM = re.compile(rf"{SID} was also bought by (\d+) other shoppers? who bought {SID}\.")
SAME_CATEGORY_CLAIM = re.compile(rf"{SID} is (?!by )([^,]+), like (\d+) history items?\.")
SAME_BRAND_CLAIM = re.compile(rf"{SID} is by ([^,]+), like (\d+) history items?\.")
TRANSITION_CLAIM = re.compile(r"Other shoppers follow (.+?) with (.+?) (\d+) of (\d+) times\.")
POPULARITY_CLAIM = re.compile(rf"{SID} was bought (\d+) times? by other shoppers\.")
PRE_RANK_CLAIM = re.compile(rf"{SID} was pre-ranked (\d+)\.")
LATEST_CLAIM = re.compile(rf"The latest purchase is {SID} \((.+?)\)\.")
NO_EVIDENCE_CLAIM = re.compile(rf"{SID} shares no co-purchase, category or brand with the history")


def user_sequences(train: pd.DataFrame) -> dict[str, list[str]]:
    return {u: f.sort_values("position")["item_id"].tolist() for u, f in train.groupby("user_id")}


def check_claims(trace: str, example: dict, sequences: dict[str, list[str]], catalog: ItemCatalog) -> int:
    """Recompute every stated number by brute force from other users' training sequences; returns how many held."""
    history = [catalog.item(h) for h in example["history"]]
    by_sid = {catalog.sid(i): catalog.item(i) for i in [*example["history"], *example["candidates"]]}
    sequences = {u: seq for u, seq in sequences.items() if u != example["user_id"]}
    baskets = {u: set(seq) for u, seq in sequences.items()}
    checked = 0
    for claims, attribute in ((CATEGORY_CLAIM, "leaf_category"), (BRAND_CLAIM, "brand")):
        for n, k, value, sid in claims.findall(trace):
            matching = [item for item in history if getattr(item, attribute) == value]
            assert (int(n), int(k)) == (len(matching), len(history)), trace
            assert matching[-1].sid == sid
            checked += 1
    for cand, n, hist in CO_CLAIM.findall(trace):
        a, b = by_sid[cand].item_id, by_sid[hist].item_id
        assert a != b and int(n) == sum(a in basket and b in basket for basket in baskets.values()) > 0
        assert b in example["history"]
        checked += 1
    for claims, attribute in ((SAME_CATEGORY_CLAIM, "leaf_category"), (SAME_BRAND_CLAIM, "brand")):
        for sid, value, n in claims.findall(trace):
            assert getattr(by_sid[sid], attribute) == value
            assert int(n) == sum(getattr(item, attribute) == value for item in history) > 0
            checked += 1
    categories = [[catalog.item(i).leaf_category for i in seq] for seq in sequences.values()]
    pairs = Counter(p for seq in categories for p in zip(seq, seq[1:]))
    for before, after, n, total in TRANSITION_CLAIM.findall(trace):
        assert before == history[-1].leaf_category
        assert int(n) == pairs[(before, after)] and int(total) == sum(c for (b, _), c in pairs.items() if b == before)
        checked += 1
    for sid, n in POPULARITY_CLAIM.findall(trace):
        assert int(n) == sum(seq.count(by_sid[sid].item_id) for seq in sequences.values())
        checked += 1
    for sid, rank in PRE_RANK_CLAIM.findall(trace):
        assert example["candidates"].index(by_sid[sid].item_id) + 1 == int(rank)
        checked += 1
    for sid, category in LATEST_CLAIM.findall(trace):
        assert (sid, category) == (history[-1].sid, history[-1].leaf_category)
        checked += 1
    for sid in NO_EVIDENCE_CLAIM.findall(trace):
        item = by_sid[sid]
        assert not any(item.leaf_category == h.leaf_category or (item.brand and item.brand == h.brand) for h in history)
        assert all(not (item.item_id in b and h.item_id in b) for b in baskets.values() for h in history)
        checked += 1
    return checked


@pytest.mark.parametrize("targeted", [False, True])
def test_every_stated_fact_holds_in_the_training_data(targeted, examples, stats, interactions, catalog):
    teacher = AnalystTeacher(stats, target_tokens=400, temperature=1.0)
    sequences = user_sequences(training_interactions(interactions))
    rng = np.random.default_rng(0)
    total = 0
    for example in examples.to_dict("records"):
        proposal = teacher.propose(example, catalog, rng, example["target"] if targeted else None)
        checked = check_claims(proposal.reasoning, example, sequences, catalog)
        # Every sentence is a checked claim except the ranking line, which
        # test_trace_has_three_steps_and_cites_only_example_sids checks.
        sentences = re.split(r"(?<=\.) ", proposal.reasoning)
        assert checked == len(sentences) - 1, proposal.reasoning
        total += checked
    assert total > 10 * len(examples)


def test_hand_built_history_counts(stats, catalog):
    # i0, i5, i10 are Nail Polish; i1 is Nail Treatment; i2 is Creams & Moisturizers.
    example = {"user_id": "new", "history": ["i0", "i1", "i5", "i2", "i10"], "candidates": [f"i{k}" for k in range(20, 30)]}
    trace = AnalystTeacher(stats, target_tokens=300).propose(example, catalog, np.random.default_rng(0), None).reasoning
    assert f"3 of 5 history items are Nail Polish, most recently {catalog.sid('i10')}." in trace
    assert f"The latest purchase is {catalog.sid('i10')} (Nail Polish)." in trace


def test_trace_has_three_steps_and_cites_only_example_sids(examples, stats, catalog):
    teacher = AnalystTeacher(stats, target_tokens=130)
    for example in examples.to_dict("records")[:20]:
        proposal = teacher.propose(example, catalog, np.random.default_rng(1), None)
        positions = [proposal.reasoning.index(title) for title in STEP_TITLES]
        assert positions == sorted(positions) and positions[0] == 0
        cited = set(re.findall(SID, proposal.reasoning))
        assert cited <= set(catalog.sids([*example["history"], *example["candidates"]]))
        assert catalog.sid(proposal.ranking[0]) in proposal.reasoning.split(STEP_TITLES[2])[1]
        assert cited & set(catalog.sids(example["history"])) and cited & set(catalog.sids(example["candidates"]))


def test_ranking_is_a_permutation_and_temperature_varies_it(examples, stats, catalog):
    example = examples.to_dict("records")[0]
    hot, cold = AnalystTeacher(stats, temperature=1.0), AnalystTeacher(stats, temperature=0.0)
    rng = np.random.default_rng(2)
    hot_rankings = {tuple(hot.propose(example, catalog, rng, None).ranking) for _ in range(20)}
    assert all(sorted(r) == sorted(example["candidates"]) for r in hot_rankings)
    assert len(hot_rankings) > 1
    assert len({tuple(cold.propose(example, catalog, rng, None).ranking) for _ in range(5)}) == 1


def test_targeted_mode_puts_the_target_first(examples, stats, catalog):
    teacher = AnalystTeacher(stats, temperature=2.0)
    for example in examples.to_dict("records")[:20]:
        proposal = teacher.propose(example, catalog, np.random.default_rng(3), example["target"])
        assert proposal.ranking[0] == example["target"]
        assert f"I rank {catalog.sid(example['target'])} first" in proposal.reasoning


@pytest.mark.parametrize("promote_top", [1, 3])
def test_promote_top_keeps_the_rest_in_pre_rank_order(promote_top, examples, stats, catalog):
    teacher = AnalystTeacher(stats, temperature=2.0, promote_top=promote_top)
    full = AnalystTeacher(stats, temperature=2.0)
    for example in examples.to_dict("records")[:20]:
        proposal = teacher.propose(example, catalog, np.random.default_rng(4), example["target"])
        sampled = full.propose(example, catalog, np.random.default_rng(4), example["target"]).ranking
        assert proposal.ranking[:promote_top] == sampled[:promote_top]
        assert proposal.ranking[0] == example["target"]
        rest = proposal.ranking[promote_top:]
        assert rest == [c for c in example["candidates"] if c in rest]
        assert sorted(proposal.ranking) == sorted(example["candidates"])


def test_length_tracks_target_tokens(examples, stats, catalog):
    for example in examples.to_dict("records")[:10]:
        lengths = []
        for target_tokens in (80, 130, 200):
            teacher = AnalystTeacher(stats, target_tokens=target_tokens)
            length = trace_length(teacher.propose(example, catalog, np.random.default_rng(4), None).reasoning)
            # Greedy filling stops within one sentence (at most ~20 proxy tokens) of the target.
            assert target_tokens - 20 <= length <= target_tokens
            lengths.append(length)
        assert lengths == sorted(lengths)


def test_trace_length_counts_sid_tokens_and_words():
    sid = "<s_a_1><s_b_2><s_c_3><s_d_0>"
    assert trace_length(f"I rank {sid} first, then ({sid}).") == 4 + 4 + 4
    assert SID_TOKEN_RE.findall(sid) and trace_length("") == 0


def test_stats_ignore_valid_and_test_interactions(interactions, catalog, examples):
    fitted = AnalystStats.fit(training_interactions(interactions), catalog)
    # Replace every user's valid and test items (their last two) with other items.
    changed = interactions.copy()
    last_two = changed.groupby("user_id")["position"].transform("size") - changed["position"] <= 2
    changed.loc[last_two, "item_id"] = "i39"
    refitted = AnalystStats.fit(training_interactions(changed), catalog)
    assert refitted == fitted
    teacher, again = AnalystTeacher(fitted), AnalystTeacher(refitted)
    example = examples.to_dict("records")[0]
    assert teacher.propose(example, catalog, np.random.default_rng(5), None) == again.propose(
        example, catalog, np.random.default_rng(5), None
    )


def test_counts_leave_out_the_examples_own_user(catalog):
    train = pd.DataFrame(
        {"user_id": ["a", "a", "b", "b"], "item_id": ["i0", "i1", "i0", "i1"], "position": [0, 1, 0, 1]}
    )
    stats = AnalystStats.fit(train, catalog)
    assert stats.co_purchases("i0", "i1", "a") == 1
    assert stats.co_purchases("i0", "i1", "someone else") == 2
    assert stats.co_purchases("i0", "i0", "someone else") == 0
    assert stats.purchases("i0", "a") == 1
    # i0 is Nail Polish, i1 Nail Treatment (fakes.make_catalog).
    assert stats.transitions_from("Nail Polish", "a") == {"Nail Treatment": 1}


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def test_citing_by_number_states_the_same_facts_without_sids(examples, stats, catalog):
    # Long enough to keep every sentence in both forms, so the two traces hold the same facts.
    by_sid, by_number = AnalystTeacher(stats, target_tokens=1000), AnalystTeacher(stats, target_tokens=1000, cite_by_number=True)
    for example in examples.to_dict("records")[:30]:
        with_sids = by_sid.propose(example, catalog, np.random.default_rng(5), example["target"])
        numbered = by_number.propose(example, catalog, np.random.default_rng(5), example["target"])
        assert numbered.ranking == with_sids.ranking
        assert not SID_TOKEN_RE.search(numbered.reasoning)
        items = {catalog.sid(i): catalog.item(i) for i in example["history"]}
        numbers = {catalog.sid(c): k for k, c in enumerate(example["candidates"], 1)}
        expected = re.sub(rf", most recently {SID}\.", ".", with_sids.reasoning)
        expected = re.sub(rf"The latest purchase is {SID} \((.+?)\)\.", lambda m: f"The latest purchase is {_article(m[2])} item.", expected)
        expected = re.sub(
            rf"who bought {SID}\.",
            lambda m: f"who bought {_article(items[m[1]].leaf_category)} item in this history." if items[m[1]].leaf_category else "who bought an item in this history.",
            expected,
        )
        expected = re.sub(SID, lambda m: f"candidate {numbers[m[1]]}", expected)
        assert numbered.reasoning == expected
        assert f"I rank candidate {example['candidates'].index(example['target']) + 1} first" in numbered.reasoning


PROMPT_ONLY = AnalystWeights(co_purchase=0.0, transition=0.0, popularity=0.0, brand=2.0, pre_rank=0.3)


def test_zero_weight_signals_are_neither_cited_nor_scored(examples, stats, interactions, catalog):
    sequences = user_sequences(training_interactions(interactions))
    rng = np.random.default_rng(0)
    records = examples.to_dict("records")
    for example in records:
        trace = AnalystTeacher(stats, target_tokens=400, weights=PROMPT_ONLY).propose(example, catalog, rng, None).reasoning
        assert not (CO_CLAIM.search(trace) or TRANSITION_CLAIM.search(trace) or POPULARITY_CLAIM.search(trace)), trace
        assert check_claims(trace, example, sequences, catalog) == len(re.split(r"(?<=\.) ", trace)) - 1
    # Counts from the training split cannot move a ranking that weighs none of them.
    def rankings(weights: AnalystWeights, counts: AnalystStats) -> list[list[str]]:
        teacher = AnalystTeacher(counts, temperature=0.0, weights=weights)
        return [teacher.propose(example, catalog, rng, None).ranking for example in records]

    assert rankings(PROMPT_ONLY, stats) == rankings(PROMPT_ONLY, AnalystStats())
    assert rankings(AnalystWeights(), stats) != rankings(AnalystWeights(), AnalystStats())


def test_config_weights_reach_the_analyst_and_unknown_signals_are_named(stats):
    cfg = load_config(None, ["traces.weights.popularity=0", "traces.weights.brand=2"])
    teacher = AnalystTeacher.from_config(stats, cfg.traces, cfg.prompts)
    assert teacher.weights == AnalystWeights(popularity=0.0, brand=2.0)
    with pytest.raises(ConfigError, match="traces.weights.recency"):
        load_config(None, ["traces.weights.recency=1"])
    with pytest.raises(ConfigError, match="traces.weights.brand"):
        load_config(None, ["traces.weights.brand=-1"])
