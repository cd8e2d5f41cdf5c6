"""Reranker: ids resolve against the features or are refused; output that is not a permutation of
the candidates falls back to the pre-rank order; a valid answer is mapped back to item ids."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import components.serving.engine as engine
from components.config import load_config
from components.prompts.render import render_answer
from components.serving.engine import ModelInfo, Reranker, ServedModel
from components.serving.request import RequestError, RerankRequest
from tests.unit.serving.tiny_service import HISTORIES, ITEM_IDS, catalog_items
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer

CANDIDATES = ITEM_IDS[4:14]


class StubFeatures:
    def history(self, user_id):
        return HISTORIES.get(user_id)

    def items(self, item_ids):
        known = catalog_items()
        return {i: known[i] for i in item_ids if i in known}

    def co_purchases(self, item_ids):
        # Two candidates were co-bought with the history: one with u0's first item, one with two.
        history = HISTORIES["u0"]
        table = {CANDIDATES[2]: {history[0]: 4}, CANDIDATES[5]: {history[0]: 1, history[-1]: 6}}
        return {i: table.get(i, {}) for i in item_ids}


@pytest.fixture(scope="module")
def reranker() -> Reranker:
    cfg = load_config(None, ["evaluation.max_new_tokens=8"])
    tokenizer = tiny_tokenizer()
    models = {
        "diffusion": ServedModel(tiny_model(tokenizer, block_size=4), tokenizer, ModelInfo("diffusion-gr2", "3", "champion")),
        "ar": ServedModel(tiny_model(tokenizer), tokenizer, ModelInfo("gr2-ar", "2")),
    }
    return Reranker(cfg, models, StubFeatures())


def test_untrained_model_falls_back_to_the_pre_rank_order(reranker: Reranker) -> None:
    for decoder in ("diffusion", "ar"):
        prepared = reranker.prepare(RerankRequest(CANDIDATES, user_id="u0", decoder=decoder, return_reasoning=True))
        [answer] = reranker.decode(reranker.batch_key(prepared), [prepared])
        assert answer["ranking"] == CANDIDATES
        assert (answer["valid"], answer["fallback"], answer["fallback_reason"], answer["reasoning"]) == (False, True, "invalid_answer", None)
        assert 1 <= answer["decode"]["forward_passes"] and 1 <= answer["decode"]["output_tokens"] <= 8
        assert answer["model"]["name"] == ("diffusion-gr2" if decoder == "diffusion" else "gr2-ar")


def test_prompt_shows_the_users_history_from_the_features(reranker: Reranker) -> None:
    prepared = reranker.prepare(RerankRequest(CANDIDATES, user_id="u0"))
    sids = catalog_items()
    assert all(sids[i].sid in prepared.prompt for i in HISTORIES["u0"] + CANDIDATES)
    assert reranker.batch_key(prepared) == ("diffusion", 0.9)


def test_the_co_purchase_line_reads_the_online_features(reranker: Reranker) -> None:
    """The service computes the prompt's co-purchase line as the examples stage does, from the
    candidates' co-purchase features, so a served prompt reads like a training prompt."""
    cfg = reranker.cfg.model_copy(deep=True)
    cfg.prompts.list_co_purchases = True
    with_line = Reranker(cfg, reranker.models, StubFeatures())
    prompt = with_line.prepare(RerankRequest(CANDIDATES, user_id="u0")).prompt
    assert f"Candidates co-bought with history items (other shoppers): {with_line.prepare(RerankRequest(CANDIDATES, user_id='u0')).candidate_sids[5]} (7)" in prompt
    assert "co-bought" not in reranker.prepare(RerankRequest(CANDIDATES, user_id="u0")).prompt


def test_a_valid_answer_is_returned_as_item_ids(reranker: Reranker, monkeypatch) -> None:
    prepared = reranker.prepare(RerankRequest(CANDIDATES, history=["p00"], threshold=0.6, return_reasoning=True))
    text = render_answer("history is nails", list(reversed(prepared.candidate_sids)))
    fake = SimpleNamespace(texts=[text], token_ids=[[1] * 12], sequence_forward_passes=[5], seconds=0.01)
    monkeypatch.setattr(engine, "generate_blocks", lambda *args, **kwargs: fake)
    [answer] = reranker.decode(reranker.batch_key(prepared), [prepared])
    assert answer["ranking"] == list(reversed(CANDIDATES))
    assert (answer["valid"], answer["fallback"], answer["fallback_reason"], answer["reasoning"]) == (True, False, None, "history is nails")
    assert answer["decode"] == {"forward_passes": 5, "output_tokens": 12, "ms": 10.0, "batch_size": 1}
    assert answer["model"] == {"name": "diffusion-gr2", "version": "3", "alias": "champion"}


def test_unknown_ids_and_users_are_refused(reranker: Reranker) -> None:
    cases = [
        (RerankRequest([*CANDIDATES[:8], "x1", "x2"], user_id="u0"), 422, "candidates", {"unknown_items": ["x1", "x2"]}),
        (RerankRequest(CANDIDATES, history=["p00", "ghost"]), 422, "history", {"unknown_items": ["ghost"]}),
        (RerankRequest(CANDIDATES, user_id="nobody"), 404, "user_id", {}),
    ]
    for request, status, field, details in cases:
        with pytest.raises(RequestError) as caught:
            reranker.prepare(request)
        assert (caught.value.status, caught.value.field, caught.value.details) == (status, field, details)


def test_speculative_decoding_answers_what_the_ar_decoder_answers(reranker: Reranker) -> None:
    answers = {}
    for decoder in ("ar", "speculative"):
        prepared = reranker.prepare(RerankRequest(CANDIDATES, user_id="u0", decoder=decoder, return_reasoning=True))
        assert reranker.batch_key(prepared) == (decoder, None)
        [answers[decoder]] = reranker.decode(reranker.batch_key(prepared), [prepared])
    ar, speculative = answers["ar"], answers["speculative"]
    assert {k: speculative[k] for k in ("ranking", "valid", "fallback", "model")} == {k: ar[k] for k in ("ranking", "valid", "fallback", "model")}
    assert speculative["decode"]["output_tokens"] == ar["decode"]["output_tokens"]


def test_a_decoder_without_a_model_is_refused(reranker: Reranker) -> None:
    only_student = Reranker(reranker.cfg, {"diffusion": reranker.models["diffusion"]}, StubFeatures())
    with pytest.raises(RequestError, match="'ar' is not served"):
        only_student.prepare(RerankRequest(CANDIDATES, user_id="u0", decoder="ar"))
    with pytest.raises(RequestError, match="'speculative' is not served"):
        only_student.prepare(RerankRequest(CANDIDATES, user_id="u0", decoder="speculative"))
    with pytest.raises(ValueError, match="needs a block-diffusion model"):
        Reranker(reranker.cfg, {"diffusion": reranker.models["ar"]}, StubFeatures())


def test_fallback_answer_keeps_the_candidates_and_says_why(reranker: Reranker) -> None:
    prepared = reranker.prepare(RerankRequest(CANDIDATES, user_id="u1"))
    for reason in ("decode_error", "deadline"):
        answer = reranker.fallback_answer(prepared, reason)
        assert answer["ranking"] == CANDIDATES and answer["fallback"] and not answer["valid"]
        assert answer["fallback_reason"] == reason
    with pytest.raises(ValueError, match="unknown fallback reason"):
        reranker.fallback_answer(prepared, "crashed")


def test_each_decode_sets_its_threads_intra_op_threads(reranker: Reranker) -> None:
    """The service decodes on worker threads, where OpenMP keeps its own thread count per thread:
    every decode sets that thread's count to serving.decode_threads, whatever it was before."""

    def decode_on_this_thread(threads: int) -> int:
        cfg = reranker.cfg.model_copy(deep=True)
        cfg.serving.decode_threads = threads
        configured = Reranker(cfg, reranker.models, StubFeatures())
        prepared = configured.prepare(RerankRequest(CANDIDATES, user_id="u0"))
        configured.decode(configured.batch_key(prepared), [prepared])
        return torch.get_num_threads()

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(1) as worker:
            assert [worker.submit(decode_on_this_thread, n).result() for n in (1, 3, 1)] == [1, 3, 1]
    finally:
        torch.set_num_threads(before)


def test_decode_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="decode_threads"):
        load_config(None, ["serving.decode_threads=0"])
