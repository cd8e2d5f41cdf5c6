"""A learnable toy task for the loop's tests: regression of a fixed linear map with an MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.config import TrainingConfig
from components.training import LOSS_WEIGHT_KEY, TOKENS_KEY, batch_indices

NUM_EXAMPLES, IN_DIM, OUT_DIM = 64, 8, 4


def make_data() -> tuple[Tensor, Tensor]:
    """The whole dataset, the same in every process: inputs (N, IN_DIM) and targets (N, OUT_DIM)."""
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(NUM_EXAMPLES, IN_DIM, generator=generator)
    weight = torch.randn(IN_DIM, OUT_DIM, generator=generator)
    return inputs, inputs @ weight


def make_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """A 2-layer MLP with a LayerNorm, so there are matrices, biases and norm gains to group."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_DIM, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, OUT_DIM)
    )


def make_batches(cfg: TrainingConfig, weighted: bool = False):
    """``batches(index)``: global micro-batch ``index`` of ``cfg.batch_size`` rows, seeded order.

    ``weighted`` gives example k the loss weight 1 + k % 5, as rows of different lengths weigh
    differently in a token-weighted loss (use ``weighted_mse_loss``).
    """
    inputs, targets = make_data()

    def batches(index: int) -> dict[str, Tensor]:
        rows = batch_indices(NUM_EXAMPLES, cfg.batch_size, index, cfg.seed)
        # Pretend each example is 3 tokens, to check tokens/s counts the key rather than rows.
        batch = {"x": inputs[rows], "y": targets[rows], TOKENS_KEY: torch.full((len(rows),), 3)}
        if weighted:
            batch[LOSS_WEIGHT_KEY] = (1 + rows % 5).float()
        return batch

    return batches


def mse_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    prediction = model(batch["x"])
    loss = nn.functional.mse_loss(prediction, batch["y"])
    return loss, {"prediction_abs_mean": prediction.detach().abs().mean()}


def weighted_mse_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Squared error averaged with the rows' loss weights, as SFT averages with token weights."""
    prediction = model(batch["x"])
    per_row = ((prediction - batch["y"]) ** 2).mean(dim=1)
    weights = batch[LOSS_WEIGHT_KEY]
    return (per_row * weights).sum() / weights.sum(), {"prediction_abs_mean": prediction.detach().abs().mean()}
