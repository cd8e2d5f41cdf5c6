"""The trace-teacher contract: given one re-ranking example, propose a reasoning trace and a ranking."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from components.prompts.render import ItemCatalog


@dataclass(frozen=True)
class Proposal:
    """One teacher answer: the reasoning text and the candidate item ids, best first."""

    reasoning: str
    ranking: list[str]


class InvalidProposal(ValueError):
    """A teacher answer that cannot be used (unparseable, not a permutation): one failed try."""


class TraceTeacher(Protocol):
    """Anything that writes a reasoning trace and a ranking for one example."""

    def propose(
        self, example: Mapping[str, Any], catalog: ItemCatalog, rng: np.random.Generator, target: str | None
    ) -> Proposal:
        """Propose a trace and a ranking.

        Args:
            example: one examples row (user_id, history, candidates, target, ...).
            catalog: SIDs and metadata of every item in the example.
            rng: the random stream of this example; repeated calls must be able to differ.
            target: the item to argue for (targeted mode), or None (rejection mode: the teacher
                must not look at ``example["target"]``).

        Returns:
            The proposal; its ranking is a permutation of ``example["candidates"]``.

        Raises:
            InvalidProposal: the answer is unusable; the caller counts a failed try.
        """
        ...
