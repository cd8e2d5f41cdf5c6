"""Pin the loop's tests to fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The equivalence tests compare runs to 1e-6, a claim about fp32; on a GPU the loop would
    # switch to bf16 autocast, whose rounding is far coarser.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
