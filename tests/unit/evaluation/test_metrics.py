from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components import rank_metrics as metrics_module
from components.config import EvaluationConfig
from components.evaluation import (
    METRIC_NAMES,
    answer_ranks,
    bootstrap_ci,
    evaluate_answers,
    floor_metrics,
    metric_values,
    ndcg_at_k,
    paired_difference_ci,
    ranking_metrics,
    recall_at_k,
)
from components.prompts import render_answer
from tests.unit.prompts.fakes import fake_catalog

RANKS = [1, 2, 4, 11]
CFG = EvaluationConfig(bootstrap_samples=500, confidence=0.95, seed=0)


def test_recall_by_hand() -> None:
    assert recall_at_k(RANKS, 1).mean() == 0.25
    assert recall_at_k(RANKS, 3).mean() == 0.5
    assert recall_at_k(RANKS, 5).mean() == 0.75
    assert recall_at_k(RANKS, 11).mean() == 1.0
    assert recall_at_k(np.array(RANKS), 3).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_ndcg_by_hand() -> None:
    assert ndcg_at_k(RANKS, 1).mean() == pytest.approx(1 / 4)
    assert ndcg_at_k(RANKS, 3).mean() == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert ndcg_at_k(RANKS, 5).mean() == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    # Rank 11 lies beyond the cut-off of 10.
    assert ndcg_at_k(RANKS, 10).mean() == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert ndcg_at_k(RANKS, 11).tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(12)])


@pytest.mark.parametrize("bad", [[0, 1], [1.0, 2.0], [[1, 2]]])
def test_ranks_must_be_positive_integers(bad: list) -> None:
    with pytest.raises(ValueError):
        recall_at_k(bad, 1)


@pytest.mark.parametrize("name", ["recall@1", "mrr_at_3", "ndcg_at_x", "recall_at_0"])
def test_unknown_metric_names_fail(name: str) -> None:
    with pytest.raises(ValueError):
        metric_values(RANKS, name)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(1).random(200)
    assert bootstrap_ci(values, 300, 0.9, seed=5) == bootstrap_ci(values, 300, 0.9, seed=5)
    assert bootstrap_ci(values, 300, 0.9, seed=5) != bootstrap_ci(values, 300, 0.9, seed=6)


def test_bootstrap_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(2).random(50)
    whole = bootstrap_ci(values, 100, 0.95, seed=3)
    monkeypatch.setattr(metrics_module, "_BOOTSTRAP_CHUNK_ELEMENTS", 50 * 7)  # 7 resamples a chunk
    assert bootstrap_ci(values, 100, 0.95, seed=3) == whole


def test_bootstrap_brackets_the_mean_and_narrows_with_data() -> None:
    small = np.tile([1.0, 0.0, 0.0, 1.0], 25)  # 100 values, mean 0.5
    large = np.tile([1.0, 0.0, 0.0, 1.0], 2500)  # 10,000 values, mean 0.5
    low_small, high_small = bootstrap_ci(small, 1000, 0.95, seed=0)
    low_large, high_large = bootstrap_ci(large, 1000, 0.95, seed=0)
    assert low_small < 0.5 < high_small and low_large < 0.5 < high_large
    # Standard error 0.5 / sqrt(n): 0.05 and 0.005, so 95% widths near 0.196 and 0.0196.
    assert high_small - low_small == pytest.approx(2 * 1.96 * 0.05, rel=0.15)
    assert high_large - low_large == pytest.approx(2 * 1.96 * 0.005, rel=0.15)


def test_bootstrap_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci([0.3] * 20, 50, 0.95, seed=0) == pytest.approx((0.3, 0.3))


def test_ranking_metrics_layout_and_means() -> None:
    result = ranking_metrics(RANKS, CFG)
    assert list(result) == ["n", *METRIC_NAMES]
    assert result["n"] == 4
    assert result["recall_at_1"]["mean"] == 0.25
    assert result["recall_at_3"]["mean"] == 0.5
    assert result["recall_at_5"]["mean"] == 0.75
    assert result["ndcg_at_3"]["mean"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    for name in METRIC_NAMES:
        assert set(result[name]) == {"mean", "ci_low", "ci_high"}
        assert result[name]["ci_low"] <= result[name]["mean"] <= result[name]["ci_high"]


def test_ranking_metrics_needs_examples() -> None:
    with pytest.raises(ValueError, match="no examples"):
        ranking_metrics([], CFG)


def test_paired_difference() -> None:
    same = paired_difference_ci(RANKS, RANKS, "recall_at_1", CFG)
    assert same == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # A moves the target to first place on 30 of 100 examples and leaves the rest as B had them.
    ranks_b = np.tile([2, 3, 1, 5, 4], 20)
    ranks_a = ranks_b.copy()
    ranks_a[:30] = 1
    diff = paired_difference_ci(ranks_a, ranks_b, "recall_at_1", CFG)
    improved = np.count_nonzero(ranks_b[:30] != 1)  # 24: six of the thirty were already first
    assert diff["mean"] == pytest.approx(improved / 100)
    assert 0.0 < diff["ci_low"] < diff["mean"] < diff["ci_high"]
    with pytest.raises(ValueError, match="length"):
        paired_difference_ci(RANKS, RANKS[:3], "recall_at_1", CFG)


# Four examples over the fake catalog; targets at pre-ranks 2, 1, 4 and 10.
CANDIDATES = [[f"i{k}" for k in range(start, start + 10)] for start in (0, 1, 2, 0)]
TARGETS = ["i1", "i1", "i5", "i9"]
PRE_RANKS = [2, 1, 4, 10]


def examples_frame() -> pd.DataFrame:
    return pd.DataFrame({"candidates": CANDIDATES, "target": TARGETS, "target_pre_rank": PRE_RANKS})


def test_evaluate_answers_scores_valid_and_falls_back_on_invalid() -> None:
    catalog = fake_catalog()
    sids = [catalog.sids(candidates) for candidates in CANDIDATES]
    target_sids = [catalog.sid(target) for target in TARGETS]
    to_front = [target_sids[0], *[s for s in sids[0] if s != target_sids[0]]]  # target 2 -> 1
    to_third = [s for s in sids[3] if s != target_sids[3]]
    to_third.insert(2, target_sids[3])  # target 10 -> 3
    answers = [
        render_answer("r", to_front),
        render_answer("r", [*sids[1][:9], sids[1][0]]),  # duplicate + omission -> pre-rank 1
        "garbage",  # unparseable -> pre-rank 4
        render_answer("r", to_third) + "<|im_end|>",
    ]
    ranks, parsed = answer_ranks(examples_frame(), answers, catalog)
    assert ranks.tolist() == [1, 1, 4, 3]
    assert [p.valid for p in parsed] == [True, False, False, True]

    result = evaluate_answers(examples_frame(), answers, catalog, CFG)
    assert result["n"] == 4
    assert result["valid_rate"] == 0.5 and result["invalid_count"] == 2
    assert result["failure_counts"] == {
        "unparseable": 1,
        "wrong_length": 0,
        "out_of_set": 0,
        "duplicate": 1,
        "omission": 1,
    }
    assert result["recall_at_1"]["mean"] == 0.5
    assert result["recall_at_3"]["mean"] == 0.75
    assert result["ndcg_at_3"]["mean"] == pytest.approx((1 + 1 + 0 + 1 / math.log2(4)) / 4)


def test_all_invalid_answers_score_exactly_the_floor() -> None:
    result = evaluate_answers(examples_frame(), ["{}"] * 4, fake_catalog(), CFG)
    floor = floor_metrics(PRE_RANKS, CFG)
    assert {name: result[name] for name in floor} == floor
    assert result["valid_rate"] == 0.0 and result["failure_counts"]["unparseable"] == 4


def test_answers_must_match_examples() -> None:
    with pytest.raises(ValueError, match="3 answers for 4 examples"):
        evaluate_answers(examples_frame(), ["{}"] * 3, fake_catalog(), CFG)


def test_target_must_be_a_candidate() -> None:
    frame = examples_frame().assign(target=["i11", "i1", "i5", "i9"])
    with pytest.raises(ValueError, match="not among its candidates"):
        answer_ranks(frame, ["{}"] * 4, fake_catalog())
