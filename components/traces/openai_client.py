"""A trace teacher behind any OpenAI-compatible chat endpoint (a large LLM served elsewhere).

The prompt is the re-ranker's own (``render_messages``), so the teacher answers in the format the
student learns. Transient failures (429, 5xx, connection errors, timeouts) are retried with
exponential backoff; anything else about the HTTP exchange is a configuration problem and raises.
A reply that does not parse into a permutation of the candidates is an ``InvalidProposal``: one
failed try for the sampler, not a crash.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from components.config import PromptConfig, TracesConfig
from components.prompts.answer import parse_answer
from components.prompts.render import ItemCatalog, render_example
from components.traces.teacher import InvalidProposal, Proposal

# Chat models often wrap JSON in a Markdown fence although the prompt asks for JSON only.
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class TeacherUnavailable(RuntimeError):
    """The endpoint kept failing with transient errors after every retry."""


def _is_transient(status: int) -> bool:
    return status == 429 or status >= 500


class OpenAITeacher:
    """Asks an OpenAI-compatible ``/chat/completions`` endpoint for a trace and a ranking."""

    def __init__(
        self,
        endpoint_url: str,
        model_name: str,
        prompt_cfg: PromptConfig,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
    ) -> None:
        """Args:
        endpoint_url: base URL, e.g. ``http://host:8000/v1``; ``/chat/completions`` is appended.
        model_name: the ``model`` field of each request.
        prompt_cfg: how items are rendered in the prompt.
        api_key_env: environment variable holding the key, sent as a Bearer token; unset or
            empty sends no Authorization header (local servers need none).
        temperature: sampling temperature of each request.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt, for transient failures only.
        backoff_s: the first retry waits this long, each later one twice as long as the last.
        """
        if not endpoint_url:
            raise ValueError("traces.endpoint_url must be set for the openai teacher")
        self.url = endpoint_url.rstrip("/") + "/chat/completions"
        self.model_name = model_name
        self.prompt_cfg = prompt_cfg
        self.temperature = temperature
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        api_key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    @classmethod
    def from_config(cls, cfg: TracesConfig, prompt_cfg: PromptConfig) -> OpenAITeacher:
        """A teacher for the endpoint, model, key variable, temperature and timeout in ``cfg``.

        Args:
            cfg: the traces section.
            prompt_cfg: how items are rendered in the prompt.

        Returns:
            The teacher (close it when done).
        """
        return cls(
            cfg.endpoint_url,
            cfg.model_name,
            prompt_cfg,
            api_key_env=cfg.api_key_env,
            temperature=cfg.temperature,
            timeout_s=cfg.timeout_s,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAITeacher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def propose(
        self, example: Mapping[str, Any], catalog: ItemCatalog, rng: np.random.Generator, target: str | None
    ) -> Proposal:
        """Request one answer and map its SIDs back to item ids.

        Args:
            example: history (oldest first) and candidates (pre-rank order).
            catalog: SIDs and metadata for the prompt.
            rng: draws the request's ``seed``, so retries of an example ask for different samples.
            target: in targeted mode, the item the user bought next; the prompt names it.

        Returns:
            The reasoning and the ranking as item ids.

        Raises:
            InvalidProposal: the reply is not an OpenAI chat completion or its answer is not a
                permutation of the candidates with a reasoning string.
            TeacherUnavailable: transient failures outlasted the retries.
            httpx.HTTPStatusError: a non-transient error status (bad URL, key or model).
        """
        messages = render_example(example, catalog, self.prompt_cfg)
        if target is not None:
            # GR2's targeted prompt: the reasoning must reach the known next purchase on its own.
            messages[-1]["content"] += (
                f"\nThe user's actual next purchase is {catalog.sid(target)}. Rank it first and write reasoning "
                "that arrives at it from the evidence, without saying you were told."
            )
        payload = {
            "model": self.model_name,
            "messages": messages,
            "temperature": self.temperature,
            "seed": int(rng.integers(2**31)),
        }
        content = self._completion_text(self._post(payload))
        candidate_sids = catalog.sids(example["candidates"])
        fenced = _FENCE_RE.match(content)
        parsed = parse_answer(fenced.group(1) if fenced else content, candidate_sids)
        if not parsed.valid or parsed.ranking is None:
            raise InvalidProposal(f"answer is not a valid ranking: {', '.join(parsed.failures)}")
        if not parsed.reasoning:
            raise InvalidProposal("answer has no reasoning")
        return Proposal(reasoning=parsed.reasoning, ranking=[catalog.item_id(sid) for sid in parsed.ranking])

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise TeacherUnavailable(f"{self.url}: {exc!r} after {attempt + 1} attempts") from exc
            else:
                if not _is_transient(response.status_code):
                    response.raise_for_status()
                    return response
                if attempt == self.max_retries:
                    raise TeacherUnavailable(f"{self.url}: HTTP {response.status_code} after {attempt + 1} attempts")
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1

    @staticmethod
    def _completion_text(response: httpx.Response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise InvalidProposal(f"reply is not a chat completion: {response.text[:200]!r}") from exc
        if not isinstance(content, str):
            raise InvalidProposal("reply has no text content")
        return content
