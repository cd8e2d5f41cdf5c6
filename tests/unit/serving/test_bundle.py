"""A serving bundle records where the feature store was; DGR2_FEATURE_STORE_DIR moves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config import load_config
from components.modeling.factory import save_model
from components.serving.bundle import FEATURE_STORE_ENV, load_reranker, write_bundle
from components.serving.engine import ModelInfo
from tests.unit.serving.tiny_service import HISTORIES, build_store
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer


def test_a_moved_feature_store_is_found_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FEATURE_STORE_ENV, raising=False)
    cfg = load_config(None, [f"storage.work_dir={tmp_path / 'work'}"])
    tokenizer = tiny_tokenizer()
    checkpoint = save_model(tiny_model(tokenizer, block_size=4), tokenizer, tmp_path / "checkpoint", {"stage": "diffusion_rl"})
    store = build_store(cfg, tmp_path / "packaged")
    bundle = write_bundle(tmp_path / "bundle", cfg, {"diffusion": (checkpoint, ModelInfo("diffusion-gr2", "1", "champion"))}, store)
    assert load_reranker(bundle).features.history("u0") == HISTORIES["u0"]

    moved = shutil.move(store, tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=rf"{store} does not exist.*{FEATURE_STORE_ENV}"):
        load_reranker(bundle)
    monkeypatch.setenv(FEATURE_STORE_ENV, str(moved))
    assert load_reranker(bundle).features.history("u0") == HISTORIES["u0"]
