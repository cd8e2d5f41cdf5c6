"""The ``POST /rerank`` request: shape checks that need no model, catalog or feature store.

Every rejection is a :class:`RequestError` that names the field and says why, with the HTTP status
the service answers with: a caller can fix the request from the error body alone.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from components.config import Config

# "speculative": the AR teacher's output, drafted by the block-diffusion student (lossless).
Decoder = Literal["diffusion", "ar", "speculative"]
DECODERS: tuple[Decoder, ...] = ("diffusion", "ar", "speculative")
FIELDS = ("user_id", "history", "candidates", "decoder", "threshold", "return_reasoning")
# What a refusal can name besides a request field: the body, the API key, the queue.
TRANSPORT_FIELDS = ("body", "authorization", "queue")


def metric_field(field: str) -> str:
    """``field`` as a metrics label: a key the client made up counts as ``unknown``, so that
    clients cannot grow the label set without bound."""
    return field if field in FIELDS or field in TRANSPORT_FIELDS else "unknown"
# Item and user ids are short keys; a longer one is a client bug, not an id.
MAX_ID_CHARS = 256


class RequestError(Exception):
    """A request the service refuses, with its HTTP status and the offending field."""

    def __init__(self, status: int, field: str, reason: str, **details: Any) -> None:
        super().__init__(f"{field}: {reason}")
        self.status = status
        self.field = field
        self.reason = reason
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``error`` (one line), ``field``, ``reason`` and any details."""
        return {"error": str(self), "field": self.field, "reason": self.reason, **self.details}


@dataclass(frozen=True)
class RerankRequest:
    """A well-formed request; whether its ids exist is checked against the feature store later."""

    candidates: list[str]
    user_id: str | None = None
    # None: read the user's history from the feature store.
    history: list[str] | None = None
    decoder: Decoder = "diffusion"
    threshold: float | None = None
    return_reasoning: bool = False

    @property
    def item_ids(self) -> list[str]:
        """Item ids that must exist: the candidates and any explicit history, each once."""
        return list(dict.fromkeys([*self.candidates, *(self.history or [])]))


def parse_json(body: bytes) -> Any:
    """The request body as JSON; a 400 that says where it stops parsing otherwise."""
    try:
        # Decoded explicitly: json.loads would guess UTF-16/32 from the first bytes.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "body", "is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, "body", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise RequestError(400, "body", "nests arrays or objects too deeply") from None


def _id_list(payload: dict[str, Any], name: str) -> list[str]:
    value = payload[name]
    if not isinstance(value, list):
        raise RequestError(422, name, f"must be a list of item ids, got {type(value).__name__}")
    bad = [i for i, entry in enumerate(value) if not isinstance(entry, str) or not entry.strip() or len(entry) > MAX_ID_CHARS]
    if bad:
        raise RequestError(422, name, f"entries must be non-empty strings of at most {MAX_ID_CHARS} characters", positions=bad[:20])
    return list(value)


def parse_request(payload: Any, cfg: Config, allowed_sizes: tuple[int, ...]) -> RerankRequest:
    """Check a decoded JSON body and turn it into a request.

    Args:
        payload: the decoded body.
        cfg: the serving config: ``serving`` gives the threshold range, ``candidates.history_max``
            how much history a prompt shows.
        allowed_sizes: candidate-list lengths the model was trained for.

    Returns:
        The request; an explicit history is cut to its most recent ``history_max`` items, as the
        training prompts were, and is used even when a ``user_id`` is given too.

    Raises:
        RequestError: 422 for a wrong type, a missing or unknown field, a list of the wrong
            length, duplicate candidates or a threshold out of range.
    """
    if not isinstance(payload, dict):
        raise RequestError(422, "body", f"must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        # The offending key is the field; a blank one is named by its JSON spelling so the client sees it.
        field = unknown[0] if unknown[0].strip() else json.dumps(unknown[0])
        raise RequestError(422, field, f"is not a request field; fields are {', '.join(FIELDS)}")

    if "candidates" not in payload:
        raise RequestError(422, "candidates", "is required")
    candidates = _id_list(payload, "candidates")
    if len(candidates) not in allowed_sizes:
        sizes = " or ".join(str(n) for n in allowed_sizes)
        raise RequestError(422, "candidates", f"must hold {sizes} item ids (the size the model was trained for), got {len(candidates)}")
    duplicates = sorted(item for item, count in Counter(candidates).items() if count > 1)
    if duplicates:
        raise RequestError(422, "candidates", "must be distinct", duplicates=duplicates)

    user_id = payload.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_ID_CHARS):
        raise RequestError(422, "user_id", f"must be a non-empty string of at most {MAX_ID_CHARS} characters")
    history = _id_list(payload, "history")[-cfg.candidates.history_max :] if payload.get("history") is not None else None
    if user_id is None and history is None:
        raise RequestError(422, "user_id", "give a user_id (history from the feature store) or an explicit history")

    decoder = payload.get("decoder", "diffusion")
    if decoder not in DECODERS:
        raise RequestError(422, "decoder", f"must be one of {', '.join(DECODERS)}, got {json.dumps(decoder)}")

    threshold = payload.get("threshold")
    if threshold is not None:
        low, high = cfg.serving.min_threshold, cfg.serving.max_threshold
        # bool is an int subclass in Python; true is not a threshold.
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise RequestError(422, "threshold", f"must be a number in [{low}, {high}]")
        if not low <= threshold <= high:
            raise RequestError(422, "threshold", f"must be in [{low}, {high}], got {threshold}")
        if decoder != "diffusion":
            raise RequestError(422, "threshold", "applies to the diffusion decoder only; drop it or use decoder diffusion")
        threshold = float(threshold)

    return_reasoning = payload.get("return_reasoning", False)
    if not isinstance(return_reasoning, bool):
        raise RequestError(422, "return_reasoning", "must be true or false")
    return RerankRequest(candidates, user_id, history, decoder, threshold, return_reasoning)
