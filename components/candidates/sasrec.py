"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): model, training, scoring.

A re-ranker's gain over the floor means more next to a trained sequential recommender, and SASRec is
the standard one. A user's item sequence is embedded (item embedding times sqrt(d) plus a learned
position embedding), passed through pre-norm blocks of causal self-attention and a position-wise
feed-forward layer, and the state at each position scores every item by a dot product with the
same item embeddings. Training uses full softmax cross-entropy over all items at every position
(12,101 items on Beauty fit on a CPU), not the paper's one sampled negative: it learns more per
epoch, so a few minutes of CPU train it close to convergence.

Items are 0-based indices here (the caller maps its ids); the model shifts them by one so that 0
pads. Sequences are left-padded, so the latest item always sits in the last column, and positions
count back from it: the last item has position 0 whatever the padded width, which lets a batch be
cut to its longest sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from components.config import SasrecConfig

WEIGHTS_FILE = "sasrec.pt"
# One user's or example's items, 0-based indices, oldest first.
Items = Sequence[int] | np.ndarray
# Every SASRec setting but ``enabled`` names a trained model: turning the baseline stage off and
# on again must find the same weights, and the pre-ranker's lists must not depend on it.
SASREC_TRAINING_FIELDS = tuple(f"sasrec.{name}" for name in SasrecConfig.model_fields if name != "enabled")


class _Block(nn.Module):
    """Pre-norm causal self-attention, then a position-wise two-layer ReLU network, both residual."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Dropout(dropout)
        )

    def forward(self, states: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        normed = self.attention_norm(states)
        attended, _ = self.attention(normed, normed, normed, attn_mask=blocked, need_weights=False)
        states = states + self.attention_dropout(attended)
        return states + self.feed_forward(self.feed_forward_norm(states))


class SASRec(nn.Module):
    """Causal self-attention over item sequences; ``forward`` gives each position's state, whose dot
    product with an item's embedding is that item's next-item score."""

    def __init__(self, n_items: int, cfg: SasrecConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden_size)
        nn.init.normal_(self.items.weight, std=cfg.hidden_size**-0.5)
        nn.init.normal_(self.positions.weight, std=cfg.hidden_size**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.hidden_size, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, width) item codes (index + 1, 0 = padding, left-padded, width <= max_len) ->
        (batch, width, hidden) states; the state at a position has seen only the items up to it."""
        width = sequences.shape[1]
        real = sequences > 0
        from_end = torch.arange(width - 1, -1, -1, device=sequences.device)
        states = self.items(sequences) * self.cfg.hidden_size**0.5 + self.positions(from_end)
        states = self.dropout(states) * real.unsqueeze(-1)
        # A query may see earlier real items and itself (so a padding query sees something and
        # softmax stays finite); True blocks the pair.
        causal = torch.ones(width, width, dtype=torch.bool, device=sequences.device).tril()
        allowed = causal & (real.unsqueeze(1) | torch.eye(width, dtype=torch.bool, device=sequences.device))
        blocked = (~allowed).repeat_interleave(self.cfg.heads, dim=0)
        for block in self.blocks:
            states = block(states, blocked) * real.unsqueeze(-1)
        return self.norm(states)

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Output embeddings of 0-based ``items`` (all items when None), shared with the input."""
        return self.items.weight[1:] if items is None else self.items(items + 1)


def left_padded(sequences: Sequence[Items], max_len: int) -> torch.Tensor:
    """(n, width) codes (index + 1) of each sequence's latest ``max_len`` items, left-padded with 0;
    width is the longest kept sequence (at least 1)."""
    kept = [np.asarray(sequence, dtype=np.int64)[-max_len:] for sequence in sequences]
    width = max([1, *(len(sequence) for sequence in kept)])
    padded = np.zeros((len(kept), width), dtype=np.int64)
    for row, sequence in enumerate(kept):
        if len(sequence):
            padded[row, width - len(sequence) :] = sequence + 1
    return torch.from_numpy(padded)


def train_sasrec(
    sequences: Sequence[Items], n_items: int, cfg: SasrecConfig, desc: str = "SASRec"
) -> tuple[SASRec, dict[str, Any]]:
    """Train SASRec to predict every next item of each sequence (its latest ``max_len + 1`` items).

    Args:
        sequences: 0-based item indices per user, oldest first; only training interactions (the
            caller leaves out whatever it will score).
        n_items: number of items.
        cfg: the ``sasrec`` section.
        desc: the progress bar's label.

    Returns:
        The model in eval mode and its training facts: steps, epochs, final loss (the last
        epoch's mean), loss per epoch, training wall and CPU seconds, sequences and predicted
        positions, and parameter count.
    """
    torch.manual_seed(cfg.seed)
    usable = [np.asarray(s, dtype=np.int64)[-(cfg.max_len + 1) :] for s in sequences if len(s) > 1]
    if not usable:
        raise ValueError("SASRec needs at least one sequence of two or more items")
    inputs = left_padded([s[:-1] for s in usable], cfg.max_len)
    targets = left_padded([s[1:] for s in usable], cfg.max_len)
    lengths = (inputs > 0).sum(dim=1)
    model = SASRec(n_items, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98))
    shuffle = torch.Generator().manual_seed(cfg.seed)
    batches_per_epoch = -(-len(usable) // cfg.batch_size)
    losses: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    model.train()
    with tqdm(total=cfg.epochs * batches_per_epoch, desc=desc, unit="step", leave=False) as progress:
        for _ in range(cfg.epochs):
            total, positions = 0.0, 0
            for rows in torch.randperm(len(usable), generator=shuffle).split(cfg.batch_size):
                width = int(lengths[rows].max())
                batch_targets = targets[rows, -width:]
                states = model(inputs[rows, -width:])
                real = batch_targets > 0
                logits = states[real] @ model.item_embeddings().T
                loss = F.cross_entropy(logits, batch_targets[real] - 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * int(real.sum())
                positions += int(real.sum())
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}")
            losses.append(total / positions)
    facts = {
        "steps": cfg.epochs * batches_per_epoch,
        "epochs": cfg.epochs,
        "final_loss": losses[-1],
        "loss_by_epoch": losses,
        "train_seconds": round(time.perf_counter() - started, 1),
        # CPU time of all threads: what training costs whatever else shares the machine.
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "sequences": len(usable),
        "positions": int(lengths.sum()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model.eval(), facts


@torch.no_grad()
def next_item_states(model: SASRec, histories: Sequence[Items], batch_size: int) -> torch.Tensor:
    """(n, hidden): the state after each history's latest item (0-based indices, oldest first)."""
    model.eval()
    parts = [
        model(left_padded(histories[start : start + batch_size], model.cfg.max_len))[:, -1]
        for start in range(0, len(histories), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.cfg.hidden_size)


@torch.no_grad()
def score_candidates(model: SASRec, histories: Sequence[Items], candidates: np.ndarray, batch_size: int) -> np.ndarray:
    """(n, N) SASRec scores of each example's N candidates (0-based indices) after its history."""
    states = next_item_states(model, histories, batch_size)
    embedded = model.item_embeddings(torch.as_tensor(candidates, dtype=torch.int64))  # (n, N, hidden)
    return torch.einsum("nh,nkh->nk", states, embedded).numpy().astype(np.float64)


def save_sasrec(model: SASRec, directory: Path) -> None:
    torch.save({"n_items": model.n_items, "config": model.cfg.model_dump(), "state_dict": model.state_dict()}, directory / WEIGHTS_FILE)


def load_sasrec(directory: Path) -> SASRec:
    """A model saved by :func:`save_sasrec`, in eval mode."""
    saved = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model = SASRec(saved["n_items"], SasrecConfig.model_validate(saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()
