"""What the service loads: checkpoints plus the config and feature-store location, in one directory.

Packaging writes it into the BentoML model store (``flows/package.py``), so a built
Bento holds its models and needs neither the MLflow server nor the artifact root at run time.
Layout::

    serving.json     {"config": {...}, "feature_store_dir": "...", "models": {"diffusion": {...}, "ar": {...}, ...}}
    diffusion/       the student's checkpoint (save_model layout)
    ar/              its AR teacher's checkpoint
    shadow/          the challenger student, when packaged for shadow traffic (serving.shadow_fraction)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Mapping

import torch
import yaml

from components.config import Config
from components.modeling.factory import load_model
from components.serving.engine import FeastFeatures, ModelInfo, Reranker, ServedModel
from components.serving.request import Decoder

MANIFEST = "serving.json"
# The bundles' name in the BentoML model store; packaging sets BUNDLE_ENV to the one it builds a
# Bento around.
BUNDLE_NAME = "dgr2-reranker"
BUNDLE_ENV = "DGR2_BENTO_MODEL"
# Where a Bento finds the feature store when it runs on another machine than the one that packaged
# it (the manifest records the packaging machine's directory).
FEATURE_STORE_ENV = "DGR2_FEATURE_STORE_DIR"
# The bundle's role for a shadow challenger: it answers no client, so it is not a Decoder.
SHADOW = "shadow"
Role = Decoder | Literal["shadow"]


def bundle_to_serve(service_file: str | Path, environ: Mapping[str, str] = os.environ) -> str:
    """The bundle a service loads.

    Inside a built Bento (``<bento>/src/deploy/service.py``) it is the one the Bento's own
    ``bento.yaml`` lists, whatever the environment says: a Bento always serves the model it was
    built with, even after later packagings put newer bundles in the store. From the source tree
    (``bentoml build`` importing the service, or serving ``deploy.service:ReRanker`` directly) it
    is ``DGR2_BENTO_MODEL``, else the newest bundle.

    Raises:
        RuntimeError: the Bento's manifest lists no bundle, or several.
    """
    source = Path(service_file).resolve().parents[1]
    manifest = source.parent / "bento.yaml"
    if source.name != "src" or not manifest.is_file():
        return environ.get(BUNDLE_ENV) or f"{BUNDLE_NAME}:latest"
    info = yaml.safe_load(manifest.read_text()) or {}
    listed = [*(info.get("models") or []), *(m for service in info.get("services") or [] for m in service.get("models") or [])]
    tags = sorted({str(m["tag"]) for m in listed if str(m.get("tag", "")).startswith(f"{BUNDLE_NAME}:")})
    if len(tags) != 1:
        raise RuntimeError(f"{manifest} lists {len(tags)} {BUNDLE_NAME} bundles ({tags}); a Bento serves exactly one")
    return tags[0]


def write_bundle(
    out_dir: str | Path, cfg: Config, checkpoints: Mapping[Role, tuple[str | Path, ModelInfo]], feature_store_dir: str | Path
) -> Path:
    """Copy the checkpoints into ``out_dir`` and write the manifest.

    Args:
        out_dir: an empty or missing directory (a BentoML model's ``path``).
        cfg: the config the models were trained with: prompts, list size, decoding and serving
            settings, and how to open the feature store.
        checkpoints: per decoder (and ``shadow``), a local checkpoint directory and the registered
            version it is.
        feature_store_dir: the Feast store directory (``feature_store_dir`` of the features stage);
            the online store is state the service reads, not something to copy.

    Returns:
        ``out_dir``.
    """
    if not checkpoints:
        raise ValueError("a bundle needs at least one checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for role, (checkpoint, info) in checkpoints.items():
        shutil.copytree(checkpoint, out / role, dirs_exist_ok=True)
        models[role] = {"dir": role, **asdict(info)}
    manifest = {"config": cfg.model_dump(mode="json"), "feature_store_dir": str(Path(feature_store_dir).resolve()), "models": models}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def read_manifest(bundle_dir: str | Path) -> dict:
    """The manifest of a bundle; FileNotFoundError names the directory when it has none."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a serving bundle: it has no {MANIFEST}")
    return json.loads(path.read_text())


def load_reranker(bundle_dir: str | Path) -> Reranker:
    """Load every packaged model and open the feature store.

    The feature store is ``$DGR2_FEATURE_STORE_DIR`` when set, else the directory recorded at
    packaging time.

    Raises:
        FileNotFoundError: no manifest, or the feature store directory is gone.
    """
    manifest = read_manifest(bundle_dir)
    cfg = Config.model_validate(manifest["config"])
    store_dir = Path(os.environ.get(FEATURE_STORE_ENV) or manifest["feature_store_dir"])
    # The embedded defaults keep the registry and the online store (sqlite) in this directory; a
    # Postgres registry with a Redis online store needs nothing from it.
    if (cfg.features.online_store == "sqlite" or not cfg.features.registry_path) and not store_dir.is_dir():
        raise FileNotFoundError(
            f"feature store directory {store_dir} does not exist; run the data flow, repackage, or set {FEATURE_STORE_ENV}"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for role, entry in manifest["models"].items():
        model, tokenizer, _ = load_model(Path(bundle_dir) / entry["dir"])
        model.to(device)
        models[role] = ServedModel(model, tokenizer, ModelInfo(entry["name"], entry["version"], entry.get("alias")))
    shadow = models.pop(SHADOW, None)
    return Reranker(cfg, models, FeastFeatures(cfg, store_dir), shadow)
