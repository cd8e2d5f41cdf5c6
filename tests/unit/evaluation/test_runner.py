from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pytest

from components.config import EvaluationConfig, ModelConfig, PromptConfig
from components.decoding import generate
from components.evaluation.runner import evaluate_decoder, paired_comparison
from components.prompts.render import render_prompts
from components.modeling.factory import build_model
from components.modeling.tokenizer import build_tokenizer
from components.prompts.render import render_answer, render_messages
from components.rank_metrics import floor_metrics
from components.semantic_ids.format import all_sid_tokens
from tests.unit.prompts.fakes import fake_catalog

CFG = EvaluationConfig(bootstrap_samples=200)


@dataclass
class _Generation:
    texts: list[str]
    output_tokens: int
    seconds: float
    tokens_per_forward: float = 1.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def _examples(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        candidates = [f"i{k}" for k in rng.permutation(12)[:10]]
        pre_rank = int(rng.integers(1, 11))
        rows.append(
            {
                "user_id": f"u{i}",
                "target_position": 2,
                "history": ["i11", "i10"],
                "candidates": candidates,
                "target": candidates[pre_rank - 1],
                "target_pre_rank": pre_rank,
                "in_test_sample": i % 2 == 0,
            }
        )
    return pd.DataFrame(rows)


def test_an_oracle_decoder_is_perfect_and_beats_the_floor():
    catalog = fake_catalog()
    examples = _examples()

    def oracle(prompts: list[str]) -> _Generation:
        texts = []
        for candidates, target in zip(examples["candidates"], examples["target"]):
            ranking = [target] + [c for c in candidates if c != target]
            texts.append(render_answer("target first", catalog.sids(ranking)))
        return _Generation(texts, output_tokens=10 * len(texts), seconds=2.0)

    result = evaluate_decoder(oracle, ["p"] * len(examples), examples, catalog, CFG)
    assert result["all"]["recall_at_1"]["mean"] == 1.0
    assert result["all"]["valid_rate"] == 1.0
    assert result["test_sample"]["n"] == 20
    assert result["all"]["vs_floor"]["recall_at_1"]["ci_low"] > 0
    assert result["decode"] == {
        "examples": 40,
        "output_tokens": 400,
        "mean_output_tokens": 10.0,
        "seconds": 2.0,
        "decode_tokens_per_s": 200.0,
        "tokens_per_forward": 1.0,
    }


def test_garbage_answers_score_exactly_the_floor_and_are_counted():
    catalog = fake_catalog()
    examples = _examples()
    result = evaluate_decoder(lambda p: _Generation(["not json"] * len(p), 0, 1.0), ["p"] * 40, examples, catalog, CFG)
    floor = floor_metrics(examples["target_pre_rank"].to_numpy(), CFG)
    for metric in ("recall_at_1", "ndcg_at_3", "ndcg_at_10"):
        assert result["all"][metric] == pytest.approx(floor[metric])
    assert result["all"]["valid_rate"] == 0.0
    assert result["all"]["failure_counts"]["unparseable"] == 40
    assert result["all"]["vs_floor"]["recall_at_1"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_an_untrained_model_through_the_real_decoder_scores_the_floor():
    """The whole path with a real tokenizer, model and AR decoder: random weights emit no valid
    permutation, so every answer falls back to the pre-rank order and is counted."""
    catalog = fake_catalog()
    examples = _examples(8)
    prompt_cfg = PromptConfig()
    texts = [
        message["content"]
        for history, candidates in zip(examples["history"], examples["candidates"])
        for message in render_messages(list(history), list(candidates), catalog, prompt_cfg)
    ]
    tokenizer = build_tokenizer(texts, all_sid_tokens(4, [12, 3, 8, 1]), vocab_size=400)
    model = build_model(ModelConfig(max_length=512), tokenizer)
    prompts = render_prompts(tokenizer, examples, catalog, prompt_cfg)
    assert all(catalog.sid(c) in p for p, cs in zip(prompts, examples["candidates"]) for c in cs)
    assert prompts[0].rstrip().endswith("assistant")

    result = evaluate_decoder(partial(generate, model, tokenizer, max_new_tokens=8, batch_size=4), prompts, examples, catalog, CFG)
    floor = floor_metrics(examples["target_pre_rank"].to_numpy(), CFG)
    assert result["all"]["valid_rate"] == 0.0
    assert result["all"]["recall_at_1"] == pytest.approx(floor["recall_at_1"])
    assert result["decode"]["examples"] == 8 and 0 < result["decode"]["output_tokens"] <= 64


def test_copying_the_pre_rank_order_is_valid_scores_the_floor_and_is_counted():
    catalog = fake_catalog()
    examples = _examples()
    copies = [render_answer("same order", catalog.sids(list(c))) for c in examples["candidates"]]
    result = evaluate_decoder(lambda p: _Generation(copies, 400, 2.0), ["p"] * len(examples), examples, catalog, CFG)
    assert result["all"]["valid_rate"] == 1.0
    assert result["all"]["copied_pre_rank_rate"] == 1.0
    assert result["all"]["recall_at_1"] == result["all"]["floor"]["recall_at_1"]
    assert result["test_sample"]["floor"]["n"] == 20


def test_a_student_is_compared_with_its_teacher_only_on_the_same_users():
    catalog = fake_catalog()
    examples = _examples()
    oracle = [render_answer("t", catalog.sids([t] + [c for c in cs if c != t])) for cs, t in zip(examples["candidates"], examples["target"])]
    copies = [render_answer("same order", catalog.sids(list(c))) for c in examples["candidates"]]

    def report(texts: list[str], rows: pd.DataFrame) -> dict:
        return {"test": evaluate_decoder(lambda p: _Generation(texts[: len(p)], 1, 1.0), ["p"] * len(rows), rows, catalog, CFG)}

    teacher, student = report(oracle, examples), report(copies, examples)
    better = paired_comparison(teacher, student, CFG)
    sample = examples["in_test_sample"].to_numpy()
    floor_hits = float((examples["target_pre_rank"].to_numpy()[sample] == 1).mean())
    assert better["n"] == 20 and better["recall_at_1"]["mean"] == pytest.approx(1.0 - floor_hits)
    assert better["recall_at_1"]["ci_low"] > 0 and paired_comparison(student, teacher, CFG)["recall_at_1"]["ci_high"] < 0
    assert paired_comparison(teacher, teacher, CFG)["ndcg_at_3"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # Another set of users (or none from the test sample) pairs with nothing.
    assert paired_comparison(report(copies[1:], examples.iloc[1:]), teacher, CFG) is None
    assert paired_comparison({"test": {"all": teacher["test"]["all"]}}, teacher, CFG) is None


def test_evaluation_examples_take_the_configured_users_per_scope():
    from components.config import Config
    from components.evaluation.stage import evaluation_examples

    rows = _examples(40).assign(split=["test"] * 20 + ["valid"] * 20, user_id=[f"u{i % 20}" for i in range(40)])
    rows["in_test_sample"] = [i < 5 for i in range(40)]
    cfg = Config(evaluation={"test_users": "sample", "valid_examples": 8, "seed": 3})
    chosen = evaluation_examples(rows, cfg)
    assert set(chosen) == {"test"} and len(chosen["test"]) == 5 and chosen["test"]["in_test_sample"].all()
    # The gate scope: a seeded sample of the valid split only, the same one every time.
    gate = evaluation_examples(rows, cfg, "gate")
    assert set(gate) == {"valid"} and len(gate["valid"]) == 8 and (gate["valid"]["split"] == "valid").all()
    assert gate["valid"]["user_id"].tolist() == evaluation_examples(rows, cfg, "gate")["valid"]["user_id"].tolist()
    everyone = evaluation_examples(rows, Config(evaluation={"test_users": "all"}))
    assert len(everyone["test"]) == 20
    capped = evaluation_examples(rows, Config(evaluation={"test_users": "all", "max_test_examples": 7}))
    assert len(capped["test"]) == 7 and (capped["test"]["split"] == "test").all()
    assert set(capped["test"]["user_id"]) < set(everyone["test"]["user_id"])
    # The quick scope takes fewer of the same users; 0 means the same users as the full scope.
    quick_cfg = Config(evaluation={"test_users": "all", "quick_test_examples": 4})
    quick = evaluation_examples(rows, quick_cfg, "quick")["test"]
    assert len(quick) == 4 and set(quick["user_id"]) < set(everyone["test"]["user_id"])
    assert len(evaluation_examples(rows, Config(evaluation={"test_users": "all"}), "quick")["test"]) == 20
    with pytest.raises(ValueError, match="scope"):
        evaluation_examples(rows, cfg, "everything")