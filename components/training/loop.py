"""One training loop for every stage; the stage supplies the model, its batches and its loss.

SID mid-training, SFT, RL, diffusion conversion and distillation all call :func:`train`. The same
call runs in a plain process and under ``torchrun``; DDP is detected from ``RANK`` in the
environment, as ``torchrun`` sets it::

    python my_stage.py                                   # one process, CPU or one GPU
    torchrun --standalone --nproc_per_node=2 my_stage.py # DDP: gloo on CPU, nccl on GPUs

What makes resume exact: the global micro-batch is a pure function of its index
(``step * grad_accum_steps + micro``, see :func:`batch_indices`), and the RNGs (torch, numpy,
python ``random``) are re-seeded at the start of every step from ``(seed, step, rank)``. A run that
restarts from the checkpoint of step ``n`` therefore sees the same data and the same random draws
(dropout, masking) as the run that never stopped; the checkpoint holds model, optimizer and
scheduler state plus the step, so nothing else carries over between steps.

Under DDP every rank builds the same global micro-batch and keeps its contiguous slice of the rows,
so a run on ``W`` ranks takes the same optimizer steps as one process over the whole batch. A stage's
loss is a mean over its shard; when rows weigh differently in that mean (SFT counts weighted
tokens, and rows differ in length), the batch says so under ``loss_weight`` and the loop scales each
shard's mean by its share of the step's total weight. Accumulated micro-batches and DDP shards then
give exactly the gradient of one mean over the step's whole batch, not a mean of shard means. Only
rank 0 logs, shows the progress bar, calls ``on_metrics`` and writes checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from components.config import TrainingConfig
from components.modeling.factory import unreadable

logger = logging.getLogger(__name__)

# Optional per-example token counts in a batch, shape (B,): tokens/s counts them when present,
# otherwise each example counts as one token. It is sharded with the rows like any other tensor.
TOKENS_KEY = "num_tokens"
# Optional per-example weights in a batch, shape (B,): the weight each row carries in the normaliser
# of a loss that is a weighted mean (SFT's and CFT's weighted token counts). Without it every row
# weighs the same, as the prompts of RL and OPD do: their rollouts are generated inside the loss.
LOSS_WEIGHT_KEY = "loss_weight"

_STATE_FILE = "state.pt"
_META_FILE = "meta.json"
_CHECKPOINT_PREFIX = "step_"
_TMP_PREFIX = ".tmp-"

Batch = Mapping[str, Tensor]
BatchFn = Callable[[int], Batch]
LossFn = Callable[[nn.Module, Batch], tuple[Tensor, Mapping[str, Tensor | float]]]
MetricsFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainState:
    """Everything besides model/optimizer/scheduler state that resume needs.

    Attributes:
        step: optimizer steps completed; the next step reads micro-batch ``step * grad_accum_steps``.
        tokens_seen: tokens (or examples) consumed across all ranks.
        loss: loss of the last completed step (mean over its micro-batches and ranks).
    """

    step: int = 0
    tokens_seen: int = 0
    loss: float = math.nan


@dataclass
class TrainResult:
    """Outcome of one :func:`train` call.

    Attributes:
        final_loss: loss of the last step (from the checkpoint when nothing was left to train).
        steps: optimizer steps completed in total, including those before a resume.
        tokens_per_s: tokens per second over the steps run by this call (all ranks together).
        wall_time_s: wall time of this call.
        resumed_from_step: step of the checkpoint this call started from, or None for a fresh run.
        checkpoint_path: the last checkpoint written or read.
    """

    final_loss: float
    steps: int
    tokens_per_s: float
    wall_time_s: float
    resumed_from_step: int | None
    checkpoint_path: Path | None


@dataclass(frozen=True)
class _Dist:
    """Where this process sits: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device
    # True when this call created the process group and so must destroy it.
    owns_group: bool

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def lr_multiplier(step: int, cfg: TrainingConfig) -> float:
    """Factor applied to ``cfg.learning_rate`` at a 0-based step.

    Linear warmup reaches 1 at step ``warmup_steps - 1``; then ``cosine`` and ``linear`` decay
    towards 0 at ``max_steps``, ``constant`` stays at 1 and ``wsd`` stays at 1 until the last
    ``decay_fraction`` of ``max_steps``, over which it falls linearly towards 0.

    Args:
        step: the optimizer step about to be taken, counted from 0.
        cfg: warmup_steps, max_steps and schedule are read.

    Returns:
        The multiplier in (0, 1].
    """
    if step < cfg.warmup_steps:
        # (step + 1) so the very first step already moves the weights.
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        return min(1.0, (cfg.max_steps - step) / max(1.0, cfg.decay_fraction * cfg.max_steps))
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from any parts, stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_indices(num_examples: int, batch_size: int, index: int, seed: int) -> Tensor:
    """Example indices of global micro-batch ``index``: epochs are seeded shuffles, read in order.

    A pure function of its arguments, so the data order after a resume is the one before it; a
    batch that crosses an epoch boundary takes the tail of one permutation and the head of the next.

    Args:
        num_examples: size of the dataset.
        batch_size: examples per global micro-batch.
        index: micro-batch index, ``step * grad_accum_steps + micro``.
        seed: the training seed.

    Returns:
        Long tensor of shape (batch_size,).
    """
    positions = torch.arange(index * batch_size, (index + 1) * batch_size)
    epochs = positions // num_examples
    indices = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        permutation = torch.randperm(num_examples, generator=generator)
        in_epoch = epochs == epoch
        indices[in_epoch] = permutation[positions[in_epoch] % num_examples]
    return indices


def length_sorted_micro_batch(lengths: Sequence[int], cfg: TrainingConfig, index: int) -> list[int]:
    """Example indices of micro-batch ``index``: its step's examples sorted by length, cut in order.

    The step's examples are the ones :func:`batch_indices` gives the step's micro-batches together
    (``batch_size * grad_accum_steps`` of them); only which rows share a micro-batch changes. Each
    micro-batch then pads to lengths close to its own, which on 2 CPU cores cut an SFT step of 4
    micro-batches of 4 by 17% against one batch of 16 (benchmarks/results/make_run_tiny.md). The
    step's gradient is the same, as every micro-batch's loss counts by its share of the step's
    loss weight (see ``_accumulate_gradients``).

    Args:
        lengths: each example's length in tokens.
        cfg: the stage's training settings (``batch_size``, ``grad_accum_steps``, ``seed``).
        index: the micro-batch index, ``step * grad_accum_steps + micro``.
    """
    step, micro = divmod(index, cfg.grad_accum_steps)
    rows = batch_indices(len(lengths), cfg.batch_size * cfg.grad_accum_steps, step, cfg.seed).tolist()
    rows.sort(key=lambda row: lengths[row])
    return rows[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The highest-step complete checkpoint under ``checkpoint_dir``, or None.

    Temp directories of an interrupted write carry another prefix, so they are never picked.
    """
    if not checkpoint_dir.is_dir():
        return None
    done = [p for p in checkpoint_dir.glob(f"{_CHECKPOINT_PREFIX}*") if (p / _STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix(_CHECKPOINT_PREFIX)), default=None)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`train`.

    Args:
        path: a ``step_*`` checkpoint directory.
        map_location: where tensors are loaded.

    Returns:
        Keys ``model``, ``optimizer``, ``scheduler`` (state dicts), ``train_state`` (a
        :class:`TrainState`), ``config`` (the resolved :class:`TrainingConfig`), ``world_size``
        and ``metadata`` (what the stage passed to :func:`train`).

    Raises:
        CheckpointError: the state file is truncated or corrupt.
    """
    try:
        # weights_only: the file holds only tensors and plain containers, so nothing executes on load.
        payload = torch.load(path / _STATE_FILE, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:  # what torch raises for a truncated or damaged archive
        raise unreadable(path / _STATE_FILE, exc) from None
    meta = json.loads((path / _META_FILE).read_text())
    return {
        **payload,
        "train_state": TrainState(**meta["train_state"]),
        "config": TrainingConfig.model_validate(meta["config"]),
        "world_size": meta["world_size"],
        "metadata": meta["metadata"],
    }


def _checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"{_CHECKPOINT_PREFIX}{step:08d}"


def _save_checkpoint(checkpoint_dir: Path, payload: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write into a temp directory, then rename: readers see a whole checkpoint or none.

    The previous checkpoint is removed only once the new one is in place, so a crash at any point
    leaves at least one complete checkpoint.
    """
    final = _checkpoint_path(checkpoint_dir, meta["train_state"]["step"])
    tmp = checkpoint_dir / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    previous = latest_checkpoint(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
        with open(tmp / _STATE_FILE, "wb") as state_file:
            torch.save(payload, state_file)
            # On disk before the rename, so a power cut cannot leave a renamed but empty checkpoint.
            state_file.flush()
            os.fsync(state_file.fileno())
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if previous is not None and previous != final:
        shutil.rmtree(previous)
    return final


def _setup_distributed() -> _Dist:
    """Join the process group when launched by torchrun; pick this process's device."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return _Dist(rank=0, world_size=1, device=device, owns_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owns_group)


def _build_optimizer(model: nn.Module, cfg: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays matrices only: biases and norm gains (1-D tensors) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is one launch for all parameters on CUDA; it does not exist on CPU.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=device.type == "cuda")


def _rank_rows(key: str, value: Tensor, env: _Dist) -> Tensor:
    """This rank's contiguous slice of ``value``'s rows (dim 0); a 0-d tensor is shared."""
    if not env.enabled or value.dim() == 0:
        return value
    if value.shape[0] % env.world_size:
        raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, not divisible by {env.world_size} ranks")
    rows = value.shape[0] // env.world_size
    return value[env.rank * rows : (env.rank + 1) * rows]


def _shard(batch: Batch, env: _Dist) -> dict[str, Tensor]:
    """This rank's rows of every tensor, moved to its device."""
    return {key: _rank_rows(key, value, env).to(env.device, non_blocking=True) for key, value in batch.items()}


def _loss_weights(batch: Batch) -> Tensor:
    """Each row's weight in the loss's normaliser (CPU): ``loss_weight``, or 1 per row without it."""
    weights = batch.get(LOSS_WEIGHT_KEY)
    if weights is not None:
        return weights.float()
    rows = next(value.shape[0] for value in batch.values() if value.dim() > 0)
    return torch.ones(rows)


def _count_tokens(batch: Batch) -> int:
    # Counted on the CPU copy before the transfer, so it never waits for the GPU.
    counts = batch.get(TOKENS_KEY)
    if counts is not None:
        return int(counts.sum())
    return next(iter(batch.values())).shape[0]


def _accumulate_gradients(
    module: nn.Module,
    batches: BatchFn,
    loss_fn: LossFn,
    cfg: TrainingConfig,
    env: _Dist,
    autocast: AbstractContextManager[Any],
    step: int,
) -> tuple[int, dict[str, float]]:
    """Forward and backward over the step's micro-batches, leaving the step's gradient in ``.grad``.

    Returns:
        Tokens of the step's global batch, and ``loss`` plus the loss_fn's extras, each the mean
        over the step's micro-batches and ranks, weighted by their shares of the step's loss weight.
    """
    micro_batches = [batches(step * cfg.grad_accum_steps + micro) for micro in range(cfg.grad_accum_steps)]
    row_weights = [_loss_weights(batch) for batch in micro_batches]
    # Every rank holds the whole global batch, so the step's total weight needs no communication.
    total_weight = float(sum(weights.sum() for weights in row_weights))
    sums: dict[str, Tensor] = {}
    tokens = 0
    for micro, (batch, weights) in enumerate(zip(micro_batches, row_weights)):
        # Already the global count, for the same reason.
        tokens += _count_tokens(batch)
        # This shard's mean loss stands for its share of the step's weight; DDP averages gradients
        # over ranks, hence the world size. A step whose rows all weigh 0 has nothing to learn from.
        shard_weight = float(_rank_rows(LOSS_WEIGHT_KEY, weights, env).sum())
        share = shard_weight / total_weight if total_weight > 0 else 0.0
        # Gradients are all-reduced once per step, on the last micro-batch's backward.
        last_micro = micro == cfg.grad_accum_steps - 1
        with module.no_sync() if env.enabled and not last_micro else nullcontext():
            with autocast:
                loss, extras = loss_fn(module, _shard(batch, env))
            (loss * (share * env.world_size)).backward()
        for key, value in {"loss": loss, **extras}.items():
            value = torch.as_tensor(value, device=env.device).detach().float()
            sums[key] = sums.get(key, 0.0) + value * share
    # One all-reduce sums the metrics over ranks. Reading them back waits for the device once per
    # step, which the progress bar needs anyway.
    names = sorted(sums)
    packed = torch.stack([sums[name] for name in names])
    if env.enabled:
        dist.all_reduce(packed)
    return tokens, dict(zip(names, packed.tolist()))


def train(
    model: nn.Module,
    batches: BatchFn,
    loss_fn: LossFn,
    cfg: TrainingConfig,
    checkpoint_dir: Path,
    on_metrics: MetricsFn | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.max_steps`` optimizer steps, resuming if a checkpoint exists.

    Args:
        model: the module to train, already built and seeded by the caller; it is moved to this
            process's device (``cuda:LOCAL_RANK`` when CUDA is available, else CPU).
        batches: ``batches(index)`` returns global micro-batch ``index`` (``step * grad_accum_steps
            + micro``) as a dict of CPU tensors whose dim 0 is the example axis, ``cfg.batch_size``
            rows. It must be a pure function of ``index`` (use :func:`batch_indices`): that is what
            makes resume exact and lets every DDP rank cut the same batch. An optional
            ``num_tokens`` entry, shape (B,), counts tokens for tokens/s; an optional
            ``loss_weight`` entry, shape (B,), gives each row's weight in the loss's normaliser.
        loss_fn: ``loss_fn(module, shard)`` returns the mean loss over the shard's rows (weighted
            by ``loss_weight`` when the batch has it) and a dict of extra scalars to report. Under
            DDP ``module`` is the DDP wrapper: call it, reach for attributes through ``.module``.
        cfg: optimizer, schedule, accumulation, clipping, checkpoint and logging settings.
        checkpoint_dir: where ``step_*`` checkpoints live; the latest one there is resumed from.
        on_metrics: called on rank 0 every ``cfg.log_every`` steps and after the last step with
            ``(step, metrics)``: ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s`` and the
            loss_fn's extras (means over micro-batches and ranks, weighted as the loss is).
            Trackers hook in here.
        metadata: JSON-serialisable facts stored in every checkpoint so it describes itself (model
            preset, tokenizer path, the full resolved config, ...).

    Returns:
        Final loss, total steps, tokens/s, wall time, the step resumed from and the last checkpoint.
    """
    started = time.perf_counter()
    env = _setup_distributed()
    try:
        return _run(model, batches, loss_fn, cfg, Path(checkpoint_dir), on_metrics, dict(metadata or {}), env, started)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _run(
    model: nn.Module,
    batches: BatchFn,
    loss_fn: LossFn,
    cfg: TrainingConfig,
    checkpoint_dir: Path,
    on_metrics: MetricsFn | None,
    metadata: dict[str, Any],
    env: _Dist,
    started: float,
) -> TrainResult:
    def info(message: str, *args: object) -> None:
        if env.is_master:
            logger.info(message, *args)

    model.to(env.device)
    optimizer = _build_optimizer(model, cfg, env.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    state = TrainState()

    # Every rank reads the same checkpoint, so all start from identical weights and step.
    checkpoint_path = latest_checkpoint(checkpoint_dir)
    resumed_from = None
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path, map_location=env.device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["train_state"]
        resumed_from = state.step
        info("resuming from %s (step %d)", checkpoint_path, state.step)
        if checkpoint["config"] != cfg:
            logger.warning("training config differs from the checkpoint's; resume is not exact")

    # bf16 autocast only where the hardware runs it natively; fp32 elsewhere (CPU, older GPUs).
    use_bf16 = env.device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    info(
        "device %s, world size %d, bf16 autocast %s, %d parameters, %d examples per step",
        env.device,
        env.world_size,
        "on" if use_bf16 else "off",
        sum(p.numel() for p in model.parameters()),
        cfg.batch_size * cfg.grad_accum_steps,
    )
    module: nn.Module = model
    if env.enabled:
        module = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    def save() -> Path:
        meta = {
            "train_state": asdict(state),
            "config": cfg.model_dump(mode="json"),
            "world_size": env.world_size,
            "metadata": metadata,
        }
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        # The step's all-reduce has already lined the ranks up before the write; the barrier after
        # it keeps every rank from running ahead of (or exiting before) a checkpoint it may resume from.
        if env.is_master:
            _save_checkpoint(checkpoint_dir, payload, meta)
        if env.enabled:
            dist.barrier()
        return _checkpoint_path(checkpoint_dir, state.step)

    first_step, first_tokens = state.step, state.tokens_seen
    window_tokens, window_started = 0, time.perf_counter()
    progress = tqdm(total=cfg.max_steps, initial=first_step, disable=not env.is_master, desc="train", unit="step")
    model.train()
    with progress:
        while state.step < cfg.max_steps:
            seed_everything(derive_seed(cfg.seed, "step", state.step, env.rank))
            lr = scheduler.get_last_lr()[0]
            tokens, means = _accumulate_gradients(module, batches, loss_fn, cfg, env, autocast, state.step)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.loss = means.pop("loss")
            state.tokens_seen += tokens
            window_tokens += tokens

            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                checkpoint_path = save()
            progress.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_started, 1e-9)
                window_tokens, window_started = 0, now
                progress.set_postfix(loss=f"{state.loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
                metrics = {"loss": state.loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s}
                if env.is_master and on_metrics is not None:
                    on_metrics(state.step, metrics | means)

    wall_time_s = time.perf_counter() - started
    tokens_run = state.tokens_seen - first_tokens
    info("done: step %d, loss %.4f, %.1fs", state.step, state.loss, wall_time_s)
    return TrainResult(
        final_loss=state.loss,
        steps=state.step,
        tokens_per_s=tokens_run / wall_time_s if state.step > first_step else 0.0,
        wall_time_s=wall_time_s,
        resumed_from_step=resumed_from,
        checkpoint_path=checkpoint_path,
    )
