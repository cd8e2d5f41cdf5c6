"""parse_request: every malformed request is refused with its status, field and reason."""

from __future__ import annotations

import pytest

from components.config import load_config
from components.serving.request import RequestError, parse_json, parse_request

CFG = load_config(None, ["candidates.history_max=3", "serving.min_threshold=0.5"])
CANDIDATES = [f"p{k}" for k in range(10)]


def _parse(**payload):
    return parse_request(payload, CFG, (10,))


def test_good_request_with_defaults() -> None:
    request = _parse(user_id="u1", candidates=CANDIDATES)
    assert (request.user_id, request.history, request.decoder, request.threshold, request.return_reasoning) == ("u1", None, "diffusion", None, False)
    assert request.item_ids == CANDIDATES


def test_explicit_history_is_cut_to_the_most_recent_items() -> None:
    request = _parse(history=["a", "b", "c", "p0", "d"], candidates=CANDIDATES, decoder="ar", return_reasoning=True)
    assert request.history == ["c", "p0", "d"]
    assert request.item_ids == [*CANDIDATES, "c", "d"]


@pytest.mark.parametrize(
    "payload, status, field, reason",
    [
        ([1, 2], 422, "body", "must be a JSON object"),
        ({"user_id": "u1"}, 422, "candidates", "is required"),
        ({"user_id": "u1", "candidates": CANDIDATES, "colour": 1}, 422, "colour", "is not a request field"),
        # A blank key is named by its JSON spelling, so the client sees which key it sent.
        ({"user_id": "u1", "candidates": CANDIDATES, "": 1}, 422, "\"\"", "is not a request field"),
        ({"user_id": "u1", "candidates": CANDIDATES, " ": 1}, 422, "\" \"", "is not a request field"),
        ({"user_id": "u1", "candidates": "p1"}, 422, "candidates", "must be a list"),
        ({"user_id": "u1", "candidates": CANDIDATES[:9]}, 422, "candidates", "must hold 10 item ids"),
        ({"user_id": "u1", "candidates": [*CANDIDATES[:9], "p0"]}, 422, "candidates", "must be distinct"),
        ({"user_id": "u1", "candidates": [*CANDIDATES[:9], 7]}, 422, "candidates", "non-empty strings"),
        ({"candidates": CANDIDATES}, 422, "user_id", "give a user_id"),
        ({"user_id": 5, "candidates": CANDIDATES}, 422, "user_id", "non-empty string"),
        ({"history": "p1", "candidates": CANDIDATES}, 422, "history", "must be a list"),
        ({"user_id": "u1", "candidates": CANDIDATES, "decoder": "beam"}, 422, "decoder", "must be one of"),
        ({"user_id": "u1", "candidates": CANDIDATES, "threshold": 0.2}, 422, "threshold", "must be in [0.5, 1.0]"),
        ({"user_id": "u1", "candidates": CANDIDATES, "threshold": True}, 422, "threshold", "must be a number"),
        ({"user_id": "u1", "candidates": CANDIDATES, "threshold": 0.9, "decoder": "ar"}, 422, "threshold", "diffusion decoder only"),
        ({"user_id": "u1", "candidates": CANDIDATES, "threshold": 0.9, "decoder": "speculative"}, 422, "threshold", "diffusion decoder only"),
        ({"user_id": "u1", "candidates": CANDIDATES, "return_reasoning": "yes"}, 422, "return_reasoning", "true or false"),
    ],
)
def test_bad_requests_name_the_field(payload, status: int, field: str, reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(payload, CFG, (10,))
    error = caught.value
    assert (error.status, error.field) == (status, field)
    assert reason in error.reason
    assert error.body()["error"] == f"{field}: {error.reason}"


def test_duplicates_are_listed() -> None:
    with pytest.raises(RequestError) as caught:
        _parse(user_id="u1", candidates=[*CANDIDATES[:8], "p0", "p1"])
    assert caught.value.body()["duplicates"] == ["p0", "p1"]


@pytest.mark.parametrize(
    "body, reason",
    [(b'{"user_id": ', "is not valid JSON"), (b"\xff\xfe", "is not UTF-8"), (b"[" * 60_000 + b"]" * 60_000, "too deeply")],
)
def test_malformed_json_is_a_400(body: bytes, reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert (caught.value.status, caught.value.field) == (400, "body") and reason in caught.value.reason


def test_a_made_up_key_is_one_metrics_label() -> None:
    from components.serving.request import metric_field

    assert [metric_field(f) for f in ("candidates", "queue", "colour", '""')] == ["candidates", "queue", "unknown", "unknown"]
