"""The re-ranker behind ``POST /rerank``: features -> prompt -> batched decode -> a safe ranking.

Plain Python with no BentoML inside, so it is tested without a server. The service
(``deploy/service.py``) adds HTTP, batching across requests and metrics around it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from components.config import Config
from components.decoding.ar import generate
from components.decoding.block import generate_blocks
from components.decoding.speculative import generate_speculative
from components.modeling.block_diffusion import is_block_diffusion
from components.prompts.answer import parse_answer, ranking_or_fallback
from components.prompts.render import CatalogItem, ItemCatalog, render_messages
from components.serving.request import Decoder, RequestError, RerankRequest
from feature_repo.co_purchase import candidate_co_purchases, decode_neighbors


@dataclass(frozen=True)
class ModelInfo:
    """Which registered version answers: ``alias`` is the alias it was packaged under, if any."""

    name: str
    version: str
    alias: str | None = None


@dataclass
class ServedModel:
    model: Any
    tokenizer: Any
    info: ModelInfo


class FeatureSource(Protocol):
    """Where user histories and item features come from (the Feast online store in production)."""

    def history(self, user_id: str) -> list[str] | None:
        """The user's item ids, oldest first; None for a user the store does not know."""

    def items(self, item_ids: Sequence[str]) -> dict[str, CatalogItem]:
        """Features of the known items among ``item_ids``; unknown ones are left out."""

    def co_purchases(self, item_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each item's training-split co-purchases (co-bought item id -> users); empty when unknown."""


class FeastFeatures:
    """User histories and item features from the Feast online store (feature service reranker_v1)."""

    def __init__(self, cfg: Config, store_dir: str | Path) -> None:
        from feature_repo.store import open_store

        self._store = open_store(cfg, Path(store_dir))
        # Requests are prepared on a thread pool; one reader at a time keeps Feast's registry
        # cache and sqlite connection out of concurrent use.
        self._lock = threading.Lock()

    def history(self, user_id: str) -> list[str] | None:
        from feature_repo.store import HISTORY_COLUMN, online_features

        with self._lock:
            row = online_features(self._store, [user_id], [])["users"].get(user_id) or {}
        # Every user in a 5-core dataset has interactions, so an empty history is an unknown user.
        history = list(row.get(HISTORY_COLUMN) or [])
        return history or None

    def items(self, item_ids: Sequence[str]) -> dict[str, CatalogItem]:
        from feature_repo.store import online_features

        with self._lock:
            rows = online_features(self._store, [], list(item_ids))["items"]
        return {
            item_id: CatalogItem(
                item_id=item_id,
                sid=row["sid"],
                title=row.get("title") or "",
                brand=row.get("brand") or None,
                categories=tuple(row.get("categories") or ()),
            )
            for item_id, row in rows.items()
            if row.get("sid")
        }

    def co_purchases(self, item_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        from feature_repo.store import CO_PURCHASE_COLUMN, online_features

        with self._lock:
            rows = online_features(self._store, [], list(item_ids))["items"]
        return {item_id: decode_neighbors(rows.get(item_id, {}).get(CO_PURCHASE_COLUMN)) for item_id in item_ids}


# Why an answer is the pre-rank order: the model's output is no permutation of the candidates,
# the decode raised, or the request's deadline passed first.
FALLBACK_REASONS = ("invalid_answer", "decode_error", "deadline")


@dataclass(frozen=True)
class Prepared:
    """A request whose ids all resolved, with its rendered prompt."""

    request: RerankRequest
    history: list[str]  # the request's, or the user's from the feature store
    prompt: str
    candidate_sids: list[str]
    catalog: ItemCatalog
    request_id: str = ""  # the service's, for its logs


class UnknownItems(RequestError):
    """422: item ids the feature store does not know (all of them listed). ``history`` is the
    history the request resolved to, which the traffic log records."""

    def __init__(self, field: str, unknown_items: list[str], history: list[str]) -> None:
        super().__init__(422, field, "unknown item ids (not in the feature store)", unknown_items=unknown_items)
        self.history = history


class Reranker:
    """Validates requests against the features, renders prompts and decodes them in batches."""

    def __init__(
        self, cfg: Config, models: Mapping[Decoder, ServedModel], features: FeatureSource, shadow: ServedModel | None = None
    ) -> None:
        if shadow is not None and not is_block_diffusion(shadow.model):
            raise ValueError("the shadow model is a challenger student and must be a block-diffusion model")
        if "diffusion" in models and not is_block_diffusion(models["diffusion"].model):
            raise ValueError("the diffusion decoder needs a block-diffusion model; this one is autoregressive")
        if "ar" in models and is_block_diffusion(models["ar"].model):
            raise ValueError("the ar decoder needs an autoregressive model; this one was converted to block diffusion")
        if not models:
            raise ValueError("a re-ranker needs at least one model")
        tau = cfg.evaluation.serving_threshold
        if not cfg.serving.min_threshold <= tau <= cfg.serving.max_threshold:
            raise ValueError(f"evaluation.serving_threshold {tau} is outside serving's allowed range")
        self.cfg = cfg
        self.models = dict(models)
        # Speculative decoding needs both: the student drafts, the AR teacher verifies.
        self.decoders: tuple[Decoder, ...] = tuple(self.models) + (("speculative",) if {"diffusion", "ar"} <= set(self.models) else ())
        self.features = features
        # The challenger that decodes a share of the champion's requests off the response path.
        self.shadow = shadow
        # Prompts state the list length, and the models were trained on this one size.
        self.allowed_sizes = (cfg.candidates.num_candidates,)

    def prepare(self, request: RerankRequest) -> Prepared:
        """Resolve the history and item features and render the prompt.

        Raises:
            RequestError: 422 for a decoder this deployment does not serve or unknown item ids
                (all of them listed), 404 for an unknown user without an explicit history.
        """
        if request.decoder not in self.decoders:
            raise RequestError(422, "decoder", f"{request.decoder!r} is not served by this deployment; served: {', '.join(self.decoders)}")
        history = request.history
        if history is None:
            assert request.user_id is not None  # parse_request guarantees one of the two
            history = self.features.history(request.user_id)
            if history is None:
                raise RequestError(404, "user_id", f"user {request.user_id!r} is not in the feature store; send an explicit history")
            history = history[-self.cfg.candidates.history_max :]
        wanted = list(dict.fromkeys([*request.candidates, *history]))
        found = self.features.items(wanted)
        unknown_candidates = [i for i in request.candidates if i not in found]
        if unknown_candidates:
            raise UnknownItems("candidates", unknown_candidates, history)
        unknown_history = [i for i in history if i not in found]
        if unknown_history:
            raise UnknownItems("history", unknown_history, history)
        catalog = ItemCatalog(found[i] for i in wanted)
        served = self._answering(request.decoder)
        co_purchases = None
        if self.cfg.prompts.list_co_purchases:
            # A served request is never a training example: no own share to leave out.
            co_purchases = candidate_co_purchases(history, request.candidates, self.features.co_purchases(request.candidates))
        messages = render_messages(history, request.candidates, catalog, self.cfg.prompts, co_purchases)
        prompt = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prepared(request, history, prompt, catalog.sids(request.candidates), catalog)

    def batch_key(self, prepared: Prepared) -> tuple[Decoder, float | None]:
        """Requests decode together only with the same decoder and threshold."""
        request = prepared.request
        if request.decoder != "diffusion":
            return (request.decoder, None)
        return ("diffusion", request.threshold if request.threshold is not None else self.cfg.evaluation.serving_threshold)

    def _answering(self, decoder: Decoder) -> ServedModel:
        """The model whose output a decoder returns (the AR teacher's, for speculative decoding)."""
        return self.models["ar" if decoder == "speculative" else decoder]

    def decode(self, key: tuple[Decoder, float | None], batch: list[Prepared]) -> list[dict[str, Any]]:
        """Decode one batch of prepared requests that share ``key`` and answer each one.

        Returns:
            One response per request, in order: ``ranking`` (item ids; the pre-rank order when
            the output is not a permutation of the candidates), ``valid``, ``fallback``,
            ``fallback_reason`` (None, or ``"invalid_answer"``), ``model``, ``decode``
            (``forward_passes`` and ``output_tokens`` of this request, ``ms`` and ``batch_size`` of
            the decode it shared) and ``reasoning`` when asked for.
        """
        decoder, threshold = key
        served = self._answering(decoder)
        return self._decode(decoder, served, threshold, batch)

    def decode_shadow(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        """Decode prepared champion requests with the shadow challenger at the serving tau; the
        answers have the champion's form (the pre-rank order where the challenger's is invalid)."""
        if self.shadow is None:
            raise ValueError("this deployment packages no shadow challenger")
        return self._decode("diffusion", self.shadow, self.cfg.evaluation.serving_threshold, batch)

    def _decode(self, decoder: Decoder, served: ServedModel, threshold: float | None, batch: list[Prepared]) -> list[dict[str, Any]]:
        # OpenMP's thread count is per calling thread, and decodes run on whichever worker thread
        # the batcher hands them to: set it on every decode.
        torch.set_num_threads(self.cfg.serving.decode_threads)
        prompts = [p.prompt for p in batch]
        max_new_tokens = self.cfg.evaluation.max_new_tokens
        if decoder == "diffusion":
            generation = generate_blocks(served.model, served.tokenizer, prompts, max_new_tokens, threshold=threshold, batch_size=len(prompts))
            forwards = list(generation.sequence_forward_passes)
        elif decoder == "speculative":
            student = self.models["diffusion"].model
            generation = generate_speculative(
                served.model, student, served.tokenizer, prompts, max_new_tokens, self.cfg.evaluation.draft_steps, batch_size=len(prompts)
            )
            forwards = list(generation.sequence_forward_passes)
        else:
            generation = generate(served.model, served.tokenizer, prompts, max_new_tokens, batch_size=len(prompts))
            # One forward per generated token: the prefill yields the first, each step one more.
            forwards = [len(ids) for ids in generation.token_ids]
        ms = round(generation.seconds * 1000, 1)
        return [
            self._answer(p, text, served.info, forward, len(ids), ms, len(batch))
            for p, text, forward, ids in zip(batch, generation.texts, forwards, generation.token_ids)
        ]

    @staticmethod
    def _answer(
        prepared: Prepared, text: str, info: ModelInfo, forwards: int, tokens: int, ms: float, batch_size: int, reason: str = "invalid_answer"
    ) -> dict[str, Any]:
        parsed = parse_answer(text, prepared.candidate_sids)
        ranking_sids, fell_back = ranking_or_fallback(parsed, prepared.candidate_sids)
        response: dict[str, Any] = {
            "ranking": [prepared.catalog.item_id(sid) for sid in ranking_sids],
            "valid": parsed.valid,
            "fallback": fell_back,
            "fallback_reason": reason if fell_back else None,
            "model": {"name": info.name, "version": info.version, "alias": info.alias},
            "decode": {"forward_passes": forwards, "output_tokens": tokens, "ms": ms, "batch_size": batch_size},
        }
        if prepared.request.return_reasoning:
            response["reasoning"] = parsed.reasoning
        return response

    def fallback_answer(self, prepared: Prepared, reason: str) -> dict[str, Any]:
        """The answer when there is no model output to check (``reason``: the decode raised, or
        the deadline passed): the pre-rank order."""
        if reason not in FALLBACK_REASONS:
            raise ValueError(f"unknown fallback reason {reason!r}; known: {FALLBACK_REASONS}")
        info = self._answering(prepared.request.decoder).info
        return self._answer(prepared, "", info, 0, 0, 0.0, 0, reason)

    def warm_up(self) -> None:
        """One short decode per model, so the first request does not pay for lazy initialisation."""
        torch.set_num_threads(self.cfg.serving.decode_threads)
        for served in [*self.models.values(), *([self.shadow] if self.shadow is not None else [])]:
            prompt = served.tokenizer.apply_chat_template([{"role": "user", "content": "warm-up"}], tokenize=False, add_generation_prompt=True)
            if is_block_diffusion(served.model):
                generate_blocks(served.model, served.tokenizer, [prompt], 8, threshold=self.cfg.evaluation.serving_threshold)
            else:
                generate(served.model, served.tokenizer, [prompt], 8)
