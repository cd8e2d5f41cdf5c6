"""A serving bundle records where the feature store was; DGR2_FEATURE_STORE_DIR moves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config import load_config
from components.modeling.factory import save_model
from components.serving.bundle import BUNDLE_ENV, FEATURE_STORE_ENV, bundle_to_serve, load_reranker, write_bundle
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


def _bento(root: Path, manifest: str) -> Path:
    """A built Bento's layout: bento.yaml beside src/, the service under src/deploy/."""
    (root / "src" / "deploy").mkdir(parents=True)
    (root / "bento.yaml").write_text(manifest)
    return root / "src" / "deploy" / "service.py"


def test_a_built_bento_serves_the_bundle_its_manifest_lists_whatever_the_environment_says(tmp_path: Path) -> None:
    service = _bento(
        tmp_path / "bento",
        "service: deploy.service:ReRanker\nservices:\n- name: dgr2-reranker\n  models:\n  - tag: dgr2-reranker:champion1\n    module: ''\n",
    )
    assert bundle_to_serve(service, {BUNDLE_ENV: "dgr2-reranker:newer"}) == "dgr2-reranker:champion1"
    assert bundle_to_serve(service, {}) == "dgr2-reranker:champion1"


def test_the_source_tree_serves_the_bundle_named_in_the_environment_or_the_newest(tmp_path: Path) -> None:
    service = tmp_path / "checkout" / "deploy" / "service.py"
    assert bundle_to_serve(service, {BUNDLE_ENV: "dgr2-reranker:abc"}) == "dgr2-reranker:abc"
    assert bundle_to_serve(service, {}) == "dgr2-reranker:latest"


def test_a_bento_without_exactly_one_bundle_refuses_to_start(tmp_path: Path) -> None:
    service = _bento(tmp_path / "bento", "service: deploy.service:ReRanker\nmodels: []\n")
    with pytest.raises(RuntimeError, match="lists 0 dgr2-reranker bundles"):
        bundle_to_serve(service, {})

