from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from components.config import PromptConfig, TracesConfig
from components.prompts.render import render_answer
from components.traces import InvalidProposal, OpenAITeacher, TeacherUnavailable, generate_traces

EXAMPLE = {
    "user_id": "u0",
    "split": "train",
    "target": "i3",
    "history": ["i0", "i5"],
    "candidates": ["i1", "i2", "i3"],
}
KEY_ENV = "DGR2_TEST_TEACHER_KEY"


def completion(content: str) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


def answer(catalog, ranking: list[str]) -> str:
    return completion(render_answer(f"1) {catalog.sid('i0')} is Nail Polish ...", catalog.sids(ranking)))


def make_teacher(url: str, **kwargs) -> OpenAITeacher:
    return OpenAITeacher(url, "teacher-model", PromptConfig(), api_key_env=KEY_ENV, backoff_s=0.01, **kwargs)


def test_success_maps_sids_back_to_item_ids(openai_server, catalog, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    url, read_log = openai_server([(200, answer(catalog, ["i3", "i1", "i2"]))])
    with make_teacher(url, temperature=0.5) as teacher:
        proposal = teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)
    assert proposal.ranking == ["i3", "i1", "i2"]
    assert proposal.reasoning.startswith(f"1) {catalog.sid('i0')}")
    (request,) = read_log()
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "teacher-model" and body["temperature"] == 0.5 and isinstance(body["seed"], int)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert catalog.sid("i3") in body["messages"][1]["content"]
    assert "authorization" not in {k.lower() for k in request["headers"]}


def test_api_key_is_sent_as_bearer_when_the_variable_is_set(openai_server, catalog, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key-123")
    url, read_log = openai_server([(200, answer(catalog, ["i3", "i1", "i2"]))])
    cfg = TracesConfig(endpoint_url=url, model_name="m", api_key_env=KEY_ENV)
    with OpenAITeacher.from_config(cfg, PromptConfig()) as teacher:
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)
    headers = {k.lower(): v for k, v in read_log()[0]["headers"].items()}
    assert headers["authorization"] == "Bearer test-key-123"


def test_retries_after_a_server_error(openai_server, catalog):
    url, read_log = openai_server([(500, "oops"), (429, "slow down"), (200, answer(catalog, ["i1", "i3", "i2"]))])
    with make_teacher(url) as teacher:
        proposal = teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)
    assert proposal.ranking == ["i1", "i3", "i2"]
    assert len(read_log()) == 3


def test_gives_up_after_the_retries_and_does_not_retry_client_errors(openai_server, catalog):
    url, read_log = openai_server([(503, "down")])
    with make_teacher(url, max_retries=2) as teacher, pytest.raises(TeacherUnavailable):
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)
    assert len(read_log()) == 3
    url, read_log = openai_server([(401, "bad key")])
    with make_teacher(url) as teacher, pytest.raises(httpx.HTTPStatusError):
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)
    assert len(read_log()) == 1


def test_connection_errors_are_retried_then_reported(catalog):
    # Port 9 (discard) on localhost refuses connections.
    with make_teacher("http://127.0.0.1:9/v1", max_retries=1) as teacher, pytest.raises(TeacherUnavailable):
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)


@pytest.mark.parametrize(
    "body",
    [
        "this is not json",
        json.dumps({"choices": []}),
        completion("Sure! The best item is the third one."),
        completion(json.dumps({"reasoning": "r", "ranking": ["<s_a_99><s_b_1><s_c_3><s_d_0>"]})),
    ],
    ids=["not-json", "no-choices", "prose", "not-a-permutation"],
)
def test_malformed_replies_are_invalid_proposals(openai_server, catalog, body):
    url, _ = openai_server([(200, body)])
    with make_teacher(url) as teacher, pytest.raises(InvalidProposal):
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), None)


def test_a_malformed_reply_counts_as_a_failed_try_in_sampling(openai_server, catalog):
    # The second reply wraps its JSON in a Markdown fence, as chat models often do.
    fenced = completion("```json\n" + render_answer("fenced", catalog.sids(["i3", "i2", "i1"])) + "\n```")
    url, read_log = openai_server([(200, "{malformed"), (200, fenced)])
    with make_teacher(url) as teacher:
        accepted, stats = generate_traces(pd.DataFrame([EXAMPLE]), teacher, catalog, TracesConfig(max_tries=3))
    assert stats["acceptance_rate"] == 1.0 and accepted["tries"].tolist() == [2]
    assert accepted["ranking"].tolist() == [["i3", "i2", "i1"]]
    seeds = [request["body"]["seed"] for request in read_log()]
    assert len(seeds) == 2 and seeds[0] != seeds[1]


def test_targeted_prompt_names_the_target(openai_server, catalog):
    url, read_log = openai_server([(200, answer(catalog, ["i3", "i1", "i2"]))])
    with make_teacher(url) as teacher:
        teacher.propose(EXAMPLE, catalog, np.random.default_rng(0), "i3")
    assert f"next purchase is {catalog.sid('i3')}" in read_log()[0]["body"]["messages"][1]["content"]
