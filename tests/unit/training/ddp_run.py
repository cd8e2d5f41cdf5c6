"""Run by the DDP test under torchrun: train the toy task (weighted rows), save each rank's final weights.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_run.py OUT_DIR CONFIG_JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from components.config import TrainingConfig
from components.training import train
from tests.unit.training.toy import make_batches, make_model, weighted_mse_loss

if __name__ == "__main__":
    out_dir, cfg = Path(sys.argv[1]), TrainingConfig.model_validate(json.loads(sys.argv[2]))
    model = make_model()
    rows_seen = 0

    def counting_loss(module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        global rows_seen
        rows_seen += len(batch["x"])
        return weighted_mse_loss(module, batch)

    result = train(model, make_batches(cfg, weighted=True), counting_loss, cfg, out_dir / "checkpoints")
    rank = os.environ["RANK"]
    torch.save(model.state_dict(), out_dir / f"rank{rank}.pt")
    summary = {"final_loss": result.final_loss, "steps": result.steps, "rows_seen": rows_seen}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(summary))
