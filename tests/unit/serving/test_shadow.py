"""Shadow traffic: how two rankings of a request are compared, the challenger's decode in the
engine, and the summary ``evaluate-champion`` reads back from a Prometheus page."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from components.config import load_config
from components.serving import shadow
from components.serving.engine import ModelInfo, Reranker, ServedModel
from components.serving.request import RerankRequest
from tests.unit.serving.test_engine import CANDIDATES, StubFeatures
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer


def test_rank_correlation_is_spearmans_rho() -> None:
    items = list("abcde")
    assert shadow.rank_correlation(items, items) == 1.0
    assert shadow.rank_correlation(items, items[::-1]) == -1.0
    # One adjacent swap among five: 1 - 6 * 2 / (5 * 24).
    assert shadow.rank_correlation(items, ["b", "a", "c", "d", "e"]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="same distinct items"):
        shadow.rank_correlation(items, ["a", "b", "c", "d", "x"])


def test_compare_reports_top1_agreement() -> None:
    assert shadow.compare(["a", "b", "c"], ["a", "c", "b"]) == {"top1_agrees": True, "rank_correlation": pytest.approx(0.5)}
    assert shadow.compare(["a", "b", "c"], ["b", "a", "c"])["top1_agrees"] is False


def test_the_summary_reads_the_services_counters_back_per_challenger() -> None:
    registry = CollectorRegistry()
    requests = Counter(shadow.REQUESTS, "", ["challenger", "outcome"], registry=registry)
    agreements = Counter(shadow.TOP1_AGREEMENTS, "", ["challenger"], registry=registry)
    valid = Counter(shadow.VALID_ANSWERS, "", ["challenger"], registry=registry)
    correlation = Histogram(shadow.RANK_CORRELATION, "", ["challenger"], registry=registry, buckets=(0.0, 0.5, 1.0))
    seconds = Histogram(shadow.DECODE_SECONDS, "", ["challenger"], registry=registry)
    Counter("dgr2_rerank_responses", "", ["decoder"], registry=registry).labels("diffusion").inc(7)  # not shadow
    challenger = "diffusion-gr2/2"
    requests.labels(challenger, "decoded").inc(4)
    requests.labels(challenger, "dropped").inc(1)
    agreements.labels(challenger).inc(3)
    valid.labels(challenger).inc(2)
    for rho, s in ((1.0, 0.2), (0.5, 0.4), (0.5, 0.2), (0.0, 0.2)):
        correlation.labels(challenger).observe(rho)
        seconds.labels(challenger).observe(s)
    summary = shadow.shadow_summary(generate_latest(registry).decode())
    assert summary == {
        challenger: pytest.approx(
            {"decoded": 4, "dropped": 1, "error": 0, "top1_agreement": 0.75, "valid_rate": 0.5, "mean_rank_correlation": 0.5,
             "mean_decode_ms": 250.0}
        )
    }
    assert shadow.shadow_summary("") == {}


def test_the_engine_decodes_a_champion_request_with_the_shadow_challenger() -> None:
    cfg = load_config(None, ["evaluation.max_new_tokens=8"])
    tokenizer = tiny_tokenizer()
    champion = ServedModel(tiny_model(tokenizer, block_size=4), tokenizer, ModelInfo("diffusion-gr2", "1", "champion"))
    challenger = ServedModel(tiny_model(tokenizer, block_size=4), tokenizer, ModelInfo("diffusion-gr2", "2", "challenger"))
    reranker = Reranker(cfg, {"diffusion": champion}, StubFeatures(), shadow=challenger)
    assert reranker.decoders == ("diffusion",)  # a shadow model answers no client
    prepared = reranker.prepare(RerankRequest(CANDIDATES, user_id="u0"))
    [answer] = reranker.decode_shadow([prepared])
    assert answer["model"] == {"name": "diffusion-gr2", "version": "2", "alias": "challenger"}
    assert sorted(answer["ranking"]) == sorted(CANDIDATES) and answer["decode"]["forward_passes"] >= 1
    with pytest.raises(ValueError, match="block-diffusion"):
        Reranker(cfg, {"diffusion": champion}, StubFeatures(), shadow=ServedModel(tiny_model(tokenizer), tokenizer, challenger.info))
    with pytest.raises(ValueError, match="no shadow challenger"):
        Reranker(cfg, {"diffusion": champion}, StubFeatures()).decode_shadow([prepared])
