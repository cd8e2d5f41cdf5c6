"""Model cards from a real MLflow registry (sqlite backend)."""

from __future__ import annotations

import pytest

from components.tracking.card import CARD_FILES, log_card, model_card
from components.tracking.champions import RegistryError
from components.tracking.runs import client
from tests.unit.tracking.test_champions import NAME, two_champions  # noqa: F401
from tests.unit.tracking.test_promotion import tracked  # noqa: F401


def _summary(model_uri: str) -> dict:
    stat = {"mean": 0.05, "ci_low": 0.01, "ci_high": 0.09}
    test = {"n": 1615, "recall_at_1": {"mean": 0.4272}, "ndcg_at_3": {"mean": 0.563}, "valid_rate": 0.9994, "copied_pre_rank_rate": 0.5913,
            "vs_floor": {"recall_at_1": stat}, "floor": {"recall_at_1": {"mean": 0.3511}, "ndcg_at_3": {"mean": 0.4949}}}
    report = {"test": {"all": test, "test_sample": test, "decode": {"tokens_per_forward": 2.66}}}
    quick = {"test": {"all": test | {"n": 200}, "decode": {"tokens_per_forward": 1.0}}}
    return {"dataset_version": "d1", "models": {"CFT+OPD+RL": model_uri}, "final": "CFT+OPD+RL",
            "evaluations": {"CFT+OPD+RL": quick, "CFT+OPD+RL (tau=0.9)": report}, "sweep": {"1.0": quick, "0.9": report}}


def test_the_champions_card_holds_its_lineage_gates_test_rows_history_and_limits(two_champions) -> None:  # noqa: F811
    cfg = two_champions
    version = client(cfg).get_model_version(NAME, "3")
    card = model_card(cfg, f"{NAME}@champion", _summary(version.tags["model_uri"]))
    assert card.startswith(f"# Model card: {NAME} version 3")
    assert "block-diffusion re-ranker (Diffusion-GR2) from stage `diffusion_rl`, block size 8" in card
    assert "Started from: gr2-ar/1" in card and "catalogue `amazon-beauty`" in card
    assert "## Promotion gates: champion (compared with version 1)" in card and "- pass: " in card
    # Its table-1 rows: tau = 1 on the quick scope, the serving tau on every test user.
    assert "| CFT+OPD+RL | 200 | 0.4272 | +0.0500 [+0.0100, +0.0900] | 0.5630 | 99.94% | 59.13% |" in card
    assert "| CFT+OPD+RL (tau=0.9) | 1,615 | 0.4272 | +0.0500 [+0.0100, +0.0900] | 0.5630 | 99.94% | 59.13% |" in card
    assert "| 0.9 | 1,615 | 0.4272 | 99.94% | 2.66 |" in card
    assert ": promote by " in card and "## Intended use and known limits" in card
    # A version the summary does not hold gets no test rows.
    assert "## On the test users" not in model_card(cfg, f"{NAME}@2", _summary(version.tags["model_uri"]))
    assert "## Shadow traffic" not in card


def test_a_challengers_card_shows_its_shadow_traffic_evidence(two_champions) -> None:  # noqa: F811
    import json

    cfg = two_champions
    evidence = {"decoded": 40, "dropped": 2, "error": 0, "top1_agreement": 0.85, "valid_rate": 0.975, "mean_rank_correlation": 0.912,
                "mean_decode_ms": 180.0}
    client(cfg).set_model_version_tag(NAME, "2", "shadow_evidence", json.dumps(evidence))
    card = model_card(cfg, f"{NAME}@2")
    assert "## Shadow traffic (live requests, decoded beside the champion)" in card
    assert "40 requests decoded (2 dropped to keep live latency, 0 errors); top-1 agreement with the champion 85.00%" in card
    assert "mean rank correlation 0.912, valid 97.50%, 180 ms per decode." in card


def test_the_card_is_logged_to_the_versions_run_as_markdown_and_html(two_champions) -> None:  # noqa: F811
    cfg = two_champions
    markdown = log_card(cfg, f"{NAME}@3")
    run_id = client(cfg).get_model_version(NAME, "3").run_id
    assert {a.path for a in client(cfg).list_artifacts(run_id)} >= set(CARD_FILES)
    html = client(cfg).download_artifacts(run_id, "model_card.html", cfg.storage.work_dir)
    assert "<h1>Model card: diffusion-gr2 version 3</h1>" in open(html).read() and markdown.startswith("# Model card")


@pytest.mark.parametrize(("reference", "message"), [("diffusion-gr2", "give NAME@ALIAS"), ("diffusion-gr2@9", "no such version"), ("nope@champion", "no such version")])
def test_a_bad_reference_says_what_to_give(two_champions, reference: str, message: str) -> None:  # noqa: F811
    with pytest.raises(RegistryError, match=message):
        model_card(two_champions, reference)
