"""Batched autoregressive decoding with a KV cache: greedy or seeded temperature/nucleus sampling.

Prompts are left-padded so that every sequence's next token sits in the last column; one prefill
forward fills the KV cache and each later forward feeds one token per sequence. A sequence that
emits a stop token is finished: it stays in the batch and is fed the pad token (its outputs are
ignored) until every sequence in its batch is done, so the cache never has to be re-indexed.
The log-prob of each chosen token is returned for RL (the policy's old log-probs).

By default the cache is an ``InPlaceCache`` on CPU (components/decoding/cache.py: appends in place,
attends over the filled part only; a ``StaticCache`` attends over all its slots and measured slower). On
CUDA it is a ``StaticCache`` preallocated for the whole batch, so every one-token forward has the
same shapes and runs through transformers' compiled forward (CUDA graphs), which replays it
without per-op launch overhead; the prefill stays eager, as in ``model.generate``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from components.decoding.cache import InPlaceCache
from components.modeling.tokenizer import IM_END

T = TypeVar("T")

logger = logging.getLogger(__name__)

# A static cache's length is rounded up to a multiple of this, so batches with slightly different
# prompt lengths share one compiled graph instead of each compiling its own.
STATIC_CACHE_MULTIPLE = 256


@dataclass
class Generation:
    """The completions of one ``generate`` call, in prompt order."""

    # Decoded completions: special tokens removed (SID tokens kept), the stop token left out.
    texts: list[str]
    # Generated ids per sequence, the stop token included when one was produced.
    token_ids: list[list[int]]
    # Log-prob of each generated token under the temperature-scaled distribution (before nucleus
    # truncation; temperature 1 when greedy).
    logprobs: list[list[float]]
    # Decoding forwards over all batches; each batch's prefill counts as one.
    forward_passes: int
    # Wall-clock time of the whole call, tokenization and detokenization included.
    seconds: float

    @property
    def output_tokens(self) -> int:
        """Generated tokens over all sequences, stop tokens included."""
        return sum(len(ids) for ids in self.token_ids)

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per forward pass of a sequence: one, for autoregressive decoding."""
        return 1.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second of wall-clock time."""
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


G = TypeVar("G", bound=Generation)


def concatenate(parts: list[G]) -> G:
    """Generations of consecutive prompt lists as one: per-sequence lists joined in order, forward
    passes and seconds summed (every field of every decoder's generation is one or the other)."""
    values = {}
    for field in dataclasses.fields(parts[0]):
        items = [getattr(part, field.name) for part in parts]
        values[field.name] = [row for item in items for row in item] if isinstance(items[0], list) else sum(items)
    return type(parts[0])(**values)


def default_stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's eos id and ``<|im_end|>`` (which closes a chat turn) when it has one."""
    stops = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    im_end = tokenizer.get_vocab().get(IM_END)
    if im_end is not None and im_end not in stops:
        stops.append(im_end)
    return stops


def cache_keyword(model: PreTrainedModel) -> str:
    """The name under which ``model.forward`` takes its KV cache.

    Newer transformers call it ``cache`` and deprecate ``past_key_values``; older ones only know
    ``past_key_values``.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids, mask)``, both ``(B, max_len)``, mask 1 on real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (B, V) with every token outside the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``;
    the most likely token is always kept.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p.
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of each row and its log-prob.

    Args:
        logits: (B, V) next-token logits, float32.
        temperature: 0 for greedy.
        top_p: nucleus mass for sampling; 1 keeps the whole vocabulary.
        generator: the sampling RNG.

    Returns:
        (tokens (B,), logprobs (B,)): the log-prob is under ``logits / temperature`` over the full
        vocabulary (``logits`` when greedy), which a training forward can recompute exactly.
    """
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        log_probs = logits.log_softmax(dim=-1)
    else:
        scaled = logits / temperature
        log_probs = scaled.log_softmax(dim=-1)
        sample_from = _nucleus(scaled, top_p) if top_p < 1.0 else scaled
        tokens = torch.multinomial(sample_from.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)


@dataclass
class DecodeSetup:
    """What every decoder derives from its arguments before the first batch."""

    stop_ids: torch.Tensor
    pad_id: int
    prompt_ids: list[list[int]]
    generator: torch.Generator | None
    cache_argument: str

    @classmethod
    def of(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        stop_token_ids: list[int] | None,
        temperature: float,
        seed: int | None,
    ) -> DecodeSetup:
        """Stop ids (default: eos and ``<|im_end|>``), pad id, tokenized prompts, the seeded RNG
        (sampling with a seed only) and the cache keyword of ``model``.

        Raises:
            ValueError: on an empty prompt.
        """
        device = next(model.parameters()).device
        stops = default_stop_token_ids(tokenizer) if stop_token_ids is None else list(stop_token_ids)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Rendered prompts already hold their special tokens; adding a bos here would double it.
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        if any(len(ids) == 0 for ids in prompt_ids):
            raise ValueError("every prompt must have at least one token")
        generator = None
        if temperature > 0.0 and seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
        return cls(stop_ids, pad_id, prompt_ids, generator, cache_keyword(model))

    def length_order(self) -> list[int]:
        """Prompt indices, longest prompt first: batches cut from this order hold prompts of
        similar length, so little of their prefill and attention is padding."""
        return sorted(range(len(self.prompt_ids)), key=lambda i: -len(self.prompt_ids[i]))

    def texts(self, tokenizer: PreTrainedTokenizerBase, token_ids: list[list[int]]) -> list[str]:
        """The completions as text: special tokens removed (SID tokens kept), the stop token left out."""
        stop_set = set(self.stop_ids.tolist())
        bodies = [row[:-1] if row and row[-1] in stop_set else row for row in token_ids]
        return tokenizer.batch_decode(bodies, skip_special_tokens=True)


def in_prompt_order(order: list[int], rows: list[T]) -> list[T]:
    """``rows``, given in ``order`` (prompt indices), put back in prompt order."""
    placed: list[T] = [None] * len(rows)  # type: ignore[list-item]
    for index, row in zip(order, rows, strict=True):
        placed[index] = row
    return placed


def decode_in_batches(setup: DecodeSetup, batch_size: int, decode_batch: Callable[[list[list[int]]], Any]) -> tuple[dict[str, list[Any]], int]:
    """Decode ``setup``'s prompts ``batch_size`` at a time, longest first.

    Args:
        decode_batch: tokenized prompts -> a dataclass of per-row lists (rows in the given order)
            and ``forward_passes``.

    Returns:
        Every per-row field, rows back in prompt order, and the forward passes summed.
    """
    order = setup.length_order()
    batches = [decode_batch([setup.prompt_ids[i] for i in order[first : first + batch_size]]) for first in range(0, len(order), batch_size)]
    names = [field.name for field in dataclasses.fields(batches[0]) if field.name != "forward_passes"]
    rows = {name: in_prompt_order(order, [row for batch in batches for row in getattr(batch, name)]) for name in names}
    return rows, sum(batch.forward_passes for batch in batches)


@contextmanager
def eval_mode(model: PreTrainedModel) -> Iterator[None]:
    """Decode in eval mode; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class _BatchDecode:
    """One batch's decode, rows in batch order."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    forward_passes: int


def _generate_batch(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    stop_ids: torch.Tensor,
    pad_id: int,
    cache_argument: str,
    static_cache: bool,
    compile_steps: bool,
) -> _BatchDecode:
    """Decode one batch of tokenized prompts.

    Args:
        static_cache: preallocate a ``StaticCache`` instead of growing an ``InPlaceCache``.
        compile_steps: run the one-token forwards through the model's compiled call (needs the
            static cache, whose shapes do not change between steps).

    Returns:
        Token ids and log-probs, one list per prompt (the ids stop after the first stop token),
        and the forward passes.
    """
    device = stop_ids.device
    ids, prompt_mask = left_pad(prompt_ids, pad_id, device)  # (B, P), (B, P)
    batch, prompt_length = ids.shape
    cache_length = prompt_length + max_new_tokens
    if static_cache:
        cache_length = -(-cache_length // STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE
    # The mask is built once: columns after the prompt are 1 from the start, since causal masking
    # already keeps each forward from seeing columns past its own token.
    mask = torch.ones((batch, cache_length), dtype=torch.long, device=device)  # (B, C)
    mask[:, :prompt_length] = prompt_mask
    # Each real token's position counts the real tokens before it, so a left-padded prompt gets
    # the positions it would have alone; pads get 0 (they are never attended to).
    positions = (prompt_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P)
    cache: Cache = (
        StaticCache(config=model.config, max_cache_len=cache_length) if static_cache else InPlaceCache()
    )
    # Preallocated outputs: one column written per step instead of a concatenation per step.
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B, N)
    log_probs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)  # (B, N)
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    # Without stop ids no sequence can finish, so the per-step device sync of the check is skipped.
    may_stop = stop_ids.numel() > 0
    # The prefill has its own shapes, so it runs eagerly; only the one-token steps are compiled.
    forward, step_forward = model, model.get_compiled_call(None) if compile_steps else model
    step_ids, step_positions = ids, positions
    steps = 0
    while steps < max_new_tokens:
        out = forward(
            input_ids=step_ids,
            # A static cache attends over all its slots, so it takes the full-width mask.
            attention_mask=mask if static_cache else mask[:, : prompt_length + steps],
            position_ids=step_positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument: cache},
        )
        logits = out.logits[:, -1].float()  # (B, V)
        next_tokens, next_log_probs = choose_tokens(logits, temperature, top_p, generator)  # (B,), (B,)
        next_tokens = next_tokens.masked_fill(done, pad_id)
        tokens[:, steps] = next_tokens
        log_probs[:, steps] = next_log_probs
        steps += 1
        if may_stop:
            done |= torch.isin(next_tokens, stop_ids)
            if bool(done.all()):
                break
        step_ids = next_tokens[:, None]  # (B, 1)
        step_positions = step_positions[:, -1:] + 1  # (B, 1)
        forward = step_forward

    token_rows, log_prob_rows = tokens[:, :steps].tolist(), log_probs[:, :steps].tolist()
    stop_set = set(stop_ids.tolist())
    for i, row in enumerate(token_rows):
        # Cut after the first stop token; the pads fed to a finished row are not output.
        end = next((t + 1 for t, token in enumerate(row) if token in stop_set), len(row))
        token_rows[i], log_prob_rows[i] = row[:end], log_prob_rows[i][:end]
    return _BatchDecode(token_rows, log_prob_rows, steps)


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token_ids: list[int] | None = None,
    batch_size: int = 16,
    static_cache: bool | None = None,
    compile: bool | None = None,
) -> Generation:
    """Complete chat prompts with the model, ``batch_size`` prompts at a time.

    Args:
        model: a causal LM; its train/eval mode is restored afterwards (decoding runs in eval).
        tokenizer: its tokenizer.
        prompts: prompts already rendered with the chat template (no special tokens are added).
        max_new_tokens: the most tokens generated per prompt.
        temperature: 0 for greedy decoding, otherwise the sampling temperature.
        top_p: nucleus sampling mass in (0, 1]; ignored when greedy.
        seed: seeds the sampling RNG so a call is reproducible; None draws fresh randomness.
        stop_token_ids: ids that end a sequence; default: eos and ``<|im_end|>``.
        batch_size: prompts per batch.
        static_cache: decode with a preallocated ``StaticCache`` instead of an ``InPlaceCache``;
            None: on CUDA only. Both give the same tokens.
        compile: run the one-token forwards through the model's ``torch.compile``d call (the
            first call per batch shape compiles); needs the static cache. None: on CUDA only.

    Returns:
        The completions in prompt order.

    Raises:
        ValueError: on an empty prompt, an out-of-range argument, or ``compile`` without the
            static cache.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    if temperature < 0.0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    start = time.perf_counter()
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    static_cache = on_cuda if static_cache is None else static_cache
    compile = static_cache and on_cuda if compile is None else compile
    if compile and not static_cache:
        raise ValueError("compile needs static_cache: a growing cache changes shapes every step")
    setup = DecodeSetup.of(model, tokenizer, prompts, stop_token_ids, temperature, seed)

    def decode_batch(prompt_ids: list[list[int]]) -> _BatchDecode:
        return _generate_batch(
            model, prompt_ids, max_new_tokens, temperature, top_p, setup.generator, setup.stop_ids, setup.pad_id, setup.cache_argument, static_cache, compile
        )

    with eval_mode(model):
        rows, forward_passes = decode_in_batches(setup, batch_size, decode_batch)
    return Generation(setup.texts(tokenizer, rows["token_ids"]), rows["token_ids"], rows["logprobs"], forward_passes, time.perf_counter() - start)
