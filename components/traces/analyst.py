"""An offline trace teacher: GR2's three reasoning steps written from training-split statistics.

The analyst scores each candidate from facts it can check (shared leaf categories and brands with
the history, co-purchases with history items, the category that usually follows the latest
purchase, popularity, the pre-rank position), samples a ranking from those scores with
temperature, and writes the reasoning from the same facts. Every sentence is a template filled
with a count computed here, so no claim can be false. Every count leaves out the example's own
user: a training example's target is itself a training interaction, and counting it would let the
trace cite the answer as evidence.

Items are cited by SID, or, when the answer names candidates by number (``prompts.answer_ids:
index``), without SIDs: a candidate as ``candidate k`` (its number in the prompt) and a history item
by its category. The reasoning then refers to candidates the way the answer does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.config import AnalystWeights, PromptConfig, TracesConfig
from components.prompts.render import ItemCatalog
from components.semantic_ids.format import SID_TOKEN_RE
from components.traces.teacher import Proposal
from feature_repo.co_purchase import co_purchase_neighbors

STEP_TITLES = ("1) Patterns in the history:", "2) Complementary categories and brands:", "3) Final selection:")


def trace_length(text: str) -> int:
    """The token-count proxy that ``target_tokens`` is measured in.

    Args:
        text: a reasoning trace.

    Returns:
        The number of SID tokens (one per level, as the tokenizer has them) plus the number of
        whitespace-separated words holding at least one letter or digit (bare punctuation left
        around a SID, such as ``(`` or ``,``, is not counted).
    """
    words = SID_TOKEN_RE.sub(" ", text).split()
    return len(SID_TOKEN_RE.findall(text)) + sum(any(ch.isalnum() for ch in word) for word in words)


@dataclass
class AnalystStats:
    """Counts over training interactions that the analyst's claims cite."""

    popularity: Counter[str] = field(default_factory=Counter)
    # item -> item -> number of users who bought both (distinct items per user).
    co_purchase: dict[str, Counter[str]] = field(default_factory=dict)
    # leaf category -> leaf category of the very next purchase -> count.
    category_transitions: dict[str, Counter[str]] = field(default_factory=dict)
    # Each user's own share of the counts above, subtracted when the analyst writes for that user.
    user_items: dict[str, Counter[str]] = field(default_factory=dict)
    user_transitions: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def fit(cls, train_interactions: pd.DataFrame, catalog: ItemCatalog) -> AnalystStats:
        """Count popularity, co-purchases and category transitions.

        Args:
            train_interactions: user_id, item_id, position of the training split only (see
                ``training_interactions``); valid and test targets must not be in it.
            catalog: gives each item its leaf category; items missing from it add no transitions.

        Returns:
            The fitted statistics.
        """
        stats = cls(co_purchase=co_purchase_neighbors(train_interactions))
        ordered = train_interactions.sort_values(["user_id", "position"], kind="stable")
        for user_id, items in ordered.groupby("user_id", sort=False)["item_id"]:
            sequence = items.tolist()
            stats.popularity.update(sequence)
            stats.user_items[str(user_id)] = Counter(sequence)
            categories = [catalog.item(i).leaf_category if i in catalog else None for i in sequence]
            own_transitions = stats.user_transitions[str(user_id)] = Counter(
                (before, after) for before, after in zip(categories, categories[1:]) if before and after
            )
            for (before, after), count in own_transitions.items():
                stats.category_transitions.setdefault(before, Counter())[after] += count
        return stats

    def co_purchases(self, a: str, b: str, user_id: str) -> int:
        """Users other than ``user_id`` who bought both ``a`` and ``b`` (distinct items) in training."""
        own = self.user_items.get(user_id, Counter())
        return 0 if a == b else self.co_purchase.get(a, Counter())[b] - int(a in own and b in own)

    def purchases(self, item: str, user_id: str) -> int:
        """Training purchases of ``item`` by users other than ``user_id``."""
        return self.popularity[item] - self.user_items.get(user_id, Counter())[item]

    def transitions_from(self, category: str, user_id: str) -> Counter[str]:
        """Leaf categories bought right after ``category`` by users other than ``user_id``, with counts."""
        own = self.user_transitions.get(user_id, Counter())
        counts = Counter(self.category_transitions.get(category, Counter()))
        counts.subtract({after: n for (before, after), n in own.items() if before == category})
        return +counts  # drops the categories only this user moved to


@dataclass
class _Evidence:
    """The facts about one candidate, all computed from the example and the statistics."""

    item_id: str
    name: str  # how the trace cites it: its SID or "candidate k"
    category: str | None
    brand: str | None
    pre_rank: int
    co_count: int  # best single history item
    co_with: str | None  # the citation of the history item it was most co-bought with
    co_total: int  # summed over distinct history items
    category_matches: int
    brand_matches: int
    transition_count: int
    transition_total: int
    popularity: int

    def score(self, weights: AnalystWeights, history_size: int) -> float:
        share = self.transition_count / self.transition_total if self.transition_total else 0.0
        return (
            weights.co_purchase * math.log1p(self.co_total)
            + weights.category * self.category_matches / history_size
            + weights.brand * self.brand_matches / history_size
            + weights.transition * share
            + weights.popularity * math.log1p(self.popularity)
            - weights.pre_rank * math.log(self.pre_rank)
        )


@dataclass(frozen=True)
class _Sentence:
    step: int  # 0, 1 or 2
    text: str
    priority: float  # lower is added first; -inf is always kept


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article."""
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


class AnalystTeacher:
    """Writes GR2's three-step reasoning from training statistics; see the module docstring."""

    def __init__(
        self,
        stats: AnalystStats,
        target_tokens: int = 130,
        temperature: float = 0.8,
        weights: AnalystWeights | None = None,
        promote_top: int = 0,
        cite_by_number: bool = False,
    ) -> None:
        """Args:
        stats: training-split statistics.
        target_tokens: the trace length to aim for, in ``trace_length`` units.
        temperature: scale of the Gumbel noise on the scores; 0 always gives the same ranking.
        weights: signal weights (the defaults when None); a zero-weight signal is never cited.
        promote_top: 0 ranks by the whole sampled order; k > 0 moves its top k to the front and
            keeps the other candidates in pre-rank order.
        cite_by_number: cite candidates as ``candidate k`` and history items by category instead
            of by SID (the ``index`` answer form).
        """
        self.stats = stats
        self.target_tokens = target_tokens
        self.temperature = temperature
        self.weights = weights or AnalystWeights()
        self.promote_top = promote_top
        self.cite_by_number = cite_by_number

    @classmethod
    def from_config(cls, stats: AnalystStats, cfg: TracesConfig, prompt_cfg: PromptConfig) -> AnalystTeacher:
        """An analyst with the config's length target, temperature, signal weights and answer form.

        Args:
            stats: training-split statistics.
            cfg: the traces section.
            prompt_cfg: the prompts section; the ``index`` answer form cites items without SIDs.

        Returns:
            The teacher.
        """
        return cls(
            stats,
            target_tokens=cfg.target_tokens,
            temperature=cfg.temperature,
            weights=cfg.weights,
            promote_top=cfg.promote_top,
            cite_by_number=prompt_cfg.answer_ids == "index",
        )

    def _cite_history(self, item: Any) -> str:
        if not self.cite_by_number:
            return item.sid
        return f"{_a(item.leaf_category)} item in this history" if item.leaf_category else "an item in this history"

    def propose(
        self, example: Mapping[str, Any], catalog: ItemCatalog, rng: np.random.Generator, target: str | None
    ) -> Proposal:
        """Sample a ranking from the evidence scores and write the trace that argues for it.

        Args:
            example: user_id, history (oldest first), candidates (pre-rank order).
            catalog: SIDs, categories and brands.
            rng: Gumbel noise source; repeated calls give different rankings when temperature > 0.
            target: put this candidate first and argue for it (targeted mode), or None.

        Returns:
            The trace and a permutation of the candidates.
        """
        history = list(example["history"])
        candidates = list(example["candidates"])
        if target is not None and target not in candidates:
            raise ValueError(f"target {target!r} is not among the candidates")
        evidence = [self._evidence(str(example["user_id"]), history, c, rank, catalog) for rank, c in enumerate(candidates, 1)]
        scores = np.array([e.score(self.weights, max(len(history), 1)) for e in evidence])
        keys = scores + self.temperature * rng.gumbel(size=len(scores))
        order = [evidence[i] for i in np.argsort(-keys, kind="stable")]
        if target is not None:
            order.sort(key=lambda e: e.item_id != target)  # stable: the rest keep their sampled order
        if self.promote_top:
            promoted = order[: self.promote_top]
            order = promoted + sorted(order[self.promote_top :], key=lambda e: e.pre_rank)
        reasoning = self._write(history, order, catalog)
        return Proposal(reasoning=reasoning, ranking=[e.item_id for e in order])

    def _evidence(
        self, user_id: str, history: Sequence[str], candidate: str, pre_rank: int, catalog: ItemCatalog
    ) -> _Evidence:
        item = catalog.item(candidate)
        co_counts = {h: self.stats.co_purchases(h, candidate, user_id) for h in dict.fromkeys(history)}
        # Most co-purchases first; ties go to the most recent history item.
        best = max(reversed(list(co_counts)), key=lambda h: co_counts[h], default=None)
        latest_category = catalog.item(history[-1]).leaf_category if history else None
        transitions = self.stats.transitions_from(latest_category, user_id) if latest_category else Counter()
        return _Evidence(
            item_id=candidate,
            name=f"candidate {pre_rank}" if self.cite_by_number else item.sid,
            category=item.leaf_category,
            brand=item.brand,
            pre_rank=pre_rank,
            co_count=co_counts[best] if best is not None else 0,
            co_with=self._cite_history(catalog.item(best)) if best is not None and co_counts[best] > 0 else None,
            co_total=sum(co_counts.values()),
            category_matches=sum(1 for h in history if item.leaf_category and catalog.item(h).leaf_category == item.leaf_category),
            brand_matches=sum(1 for h in history if item.brand and catalog.item(h).brand == item.brand),
            transition_count=transitions[item.leaf_category] if item.leaf_category else 0,
            transition_total=sum(transitions.values()),
            popularity=self.stats.purchases(candidate, user_id),
        )

    def _write(self, history: Sequence[str], order: Sequence[_Evidence], catalog: ItemCatalog) -> str:
        sentences = self._history_sentences(history, catalog) + self._candidate_sentences(history, order, catalog)
        sentences += self._selection_sentences(order)
        kept = [s for s in sentences if s.priority == -math.inf]
        used = sum(trace_length(s.text) for s in kept) + sum(trace_length(t) for t in STEP_TITLES)
        # Greedy fill by priority; a sentence that overshoots is skipped so a shorter one may fit.
        for sentence in sorted((s for s in sentences if s.priority != -math.inf), key=lambda s: s.priority):
            length = trace_length(sentence.text)
            if used + length <= self.target_tokens:
                kept.append(sentence)
                used += length
        kept_ids = {id(s) for s in kept}
        steps = [
            " ".join([title] + [s.text for s in sentences if s.step == step and id(s) in kept_ids])
            for step, title in enumerate(STEP_TITLES)
        ]
        return " ".join(steps)

    def _history_sentences(self, history: Sequence[str], catalog: ItemCatalog) -> list[_Sentence]:
        size = len(history)
        items = [catalog.item(h) for h in history]
        sentences: list[_Sentence] = []
        patterns = (
            ("leaf_category", "{n} of {k} history items {verb} {value}{latest}.", self.weights.category),
            ("brand", "{n} of {k} history items {verb} by {value}{latest}.", self.weights.brand),
        )
        for kind, (attribute, template, weight) in enumerate(patterns):
            if not weight:
                continue
            # Counted newest first, so ties go to the more recent value (most_common keeps that order).
            counts = Counter(getattr(item, attribute) for item in reversed(items) if getattr(item, attribute))
            for position, (value, n) in enumerate(counts.most_common()):
                latest = next(item for item in reversed(items) if getattr(item, attribute) == value)
                # Without SIDs the most recent such item has no name to cite.
                cited = "" if self.cite_by_number else f", most recently {latest.sid}"
                text = template.format(n=n, k=size, verb=_plural(n, "is", "are"), value=value, latest=cited)
                # A repeated dominant category is the step's core; single items are weak patterns, so last.
                core = kind == 0 and position == 0 and n > 1
                priority = -math.inf if core else position + 0.5 * kind + (10.0 if n == 1 else 0.0)
                sentences.append(_Sentence(0, text, priority))
        if history:
            latest = items[-1]
            if self.cite_by_number:
                text = f"The latest purchase is {_a(latest.leaf_category) if latest.leaf_category else 'an'} item."
            else:
                text = f"The latest purchase is {latest.sid}" + (f" ({latest.leaf_category})." if latest.leaf_category else ".")
            has_core = any(s.priority == -math.inf for s in sentences)
            sentences.append(_Sentence(0, text, 0.25 if has_core else -math.inf))
        return sentences

    def _candidate_sentences(
        self, history: Sequence[str], order: Sequence[_Evidence], catalog: ItemCatalog
    ) -> list[_Sentence]:
        latest_category = catalog.item(history[-1]).leaf_category if history else None
        cited_transitions: set[str] = set()
        sentences: list[_Sentence] = []
        for rank, e in enumerate(order):
            facts: list[str] = []
            if e.co_with is not None and self.weights.co_purchase:
                facts.append(
                    f"{e.name} was also bought by {e.co_count} other {_plural(e.co_count, 'shopper', 'shoppers')} "
                    f"who bought {e.co_with}."
                )
            if e.category_matches and self.weights.category:
                facts.append(f"{e.name} is {e.category}, like {e.category_matches} history {_plural(e.category_matches, 'item', 'items')}.")
            if e.brand_matches and self.weights.brand:
                facts.append(f"{e.name} is by {e.brand}, like {e.brand_matches} history {_plural(e.brand_matches, 'item', 'items')}.")
            if e.transition_count and e.category not in cited_transitions and self.weights.transition:
                cited_transitions.add(e.category or "")
                facts.append(
                    f"Other shoppers follow {latest_category} with {e.category} "
                    f"{e.transition_count} of {e.transition_total} times."
                )
            if self.weights.popularity:
                facts.append(f"{e.name} was bought {e.popularity} {_plural(e.popularity, 'time', 'times')} by other shoppers.")
            for kind, text in enumerate(facts):
                # The top item's strongest fact is the step's core; evidence for higher-ranked
                # items comes first, so a short trace argues for its own top choices.
                core = rank == 0 and kind == 0
                sentences.append(_Sentence(1, text, -math.inf if core else rank + 0.1 * kind))
        return sentences

    def _selection_sentences(self, order: Sequence[_Evidence]) -> list[_Sentence]:
        top = [e.name for e in order[:3]]
        lead = f"I rank {top[0]} first" + (f", then {' and '.join(top[1:])}." if len(top) > 1 else ".")
        sentences = [_Sentence(2, lead, -math.inf), _Sentence(2, f"{top[0]} was pre-ranked {order[0].pre_rank}.", 0.75)]
        for rank, e in enumerate(order[len(order) // 2 :], len(order) // 2):
            if not (e.co_total or e.category_matches or e.brand_matches):
                text = f"{e.name} shares no co-purchase, category or brand with the history, so it ranks low."
                sentences.append(_Sentence(2, text, rank + 0.5))
        return sentences
