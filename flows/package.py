"""Packaging: a registered Diffusion-GR2 version -> the BentoML model store -> a built Bento.

The recipe's last step after promotion (and ``retrain``'s): the student at an alias (or a given
version) and the AR teacher named by its ``parent_model_version`` lineage tag are copied into one
BentoML model, ``dgr2-reranker``, with the config and feature-store location the service needs;
``bentoml build`` then packs that model with the service code. Packages are not locked, so the
build works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from components import storage
from components.config import Config
from components.serving.bundle import BUNDLE_ENV, BUNDLE_NAME, SHADOW, Role, write_bundle
from components.serving.engine import ModelInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
BENTOFILE = REPO_ROOT / "deploy" / "bentofile.yaml"


class PackagingError(RuntimeError):
    """Nothing to package (no version at the alias) or ``bentoml build`` failed; the message says which."""


@dataclass(frozen=True)
class PackagedService:
    model_tag: str  # the bundle in the BentoML model store, dgr2-reranker:<version>
    bento_tag: str | None  # the built Bento, dgr2-reranker:<version>; None when not built
    student: str  # diffusion-gr2/<version>
    teacher: str  # gr2-ar/<version>, as the lineage names it
    shadow: str | None = None  # diffusion-gr2/<version>: the challenger packaged for shadow traffic


def _checkpoint_dir(cfg: Config, version: Any) -> Path:
    from components.tracking.registry import version_checkpoint

    uri = version_checkpoint(cfg, version)
    # version_checkpoint returns either a published URI or a plain local download of the version.
    return storage.fetch_dir(uri, cfg.storage.work_dir) if storage.is_s3(uri) else Path(uri)


def _teacher_version(cfg: Config, student: Any) -> Any:
    """The AR teacher the student's lineage tag names (``gr2-ar/<n>``).

    Raises:
        PackagingError: the tag names no registered teacher. The service's ``ar`` and
            ``speculative`` decoders need it, so a Bento without it would offer decoders it lacks.
    """
    from mlflow.exceptions import MlflowException

    from components.tracking.runs import client

    parent = student.tags.get("parent_model_version", "")
    name, _, number = parent.partition("/")
    where = f"{student.name}/{student.version}'s parent_model_version tag"
    if name != cfg.tracking.teacher_model_name or not number.isdigit():
        raise PackagingError(f"{where} is {parent!r}, not {cfg.tracking.teacher_model_name}/<version>: no AR teacher to package")
    try:
        return client(cfg).get_model_version(name, number)
    except MlflowException as exc:
        raise PackagingError(f"{where} names {parent}, which the registry cannot return: {exc.message}") from exc


def _shadow_version(cfg: Config, student: Any) -> Any | None:
    """The challenger to shadow ``student`` with: only when ``serving.shadow_fraction`` asks for
    shadow traffic, and only a challenger that is another version of the same catalogue."""
    from components.tracking.registry import CHALLENGER, version_by_alias

    if cfg.serving.shadow_fraction <= 0:
        return None
    challenger = version_by_alias(cfg, student.name, CHALLENGER)
    if challenger is None or challenger.version == student.version:
        return None
    if challenger.tags.get("catalog") != student.tags.get("catalog"):
        return None
    return challenger


def feature_store_of(cfg: Config, dataset_version: str) -> Path:
    """The local Feast store the data flow built for ``dataset_version`` under ``cfg``.

    Raises:
        PackagingError: the data flow has not built (and materialized) that store here.
    """
    from components.semantic_ids.build import SEMANTIC_IDS_STAGE
    from feature_repo.stage import FEATURES_STAGE, features_inputs, features_ready

    dataset_uri = storage.join(cfg.storage.artifact_root, "datasets", dataset_version)
    sid_uri = SEMANTIC_IDS_STAGE.output_uri(cfg, {"dataset": dataset_uri})
    features_uri = FEATURES_STAGE.output_uri(cfg, features_inputs(dataset_uri, sid_uri))
    if not features_ready(cfg, features_uri):
        raise PackagingError(f"no materialized feature store for dataset version {dataset_version} under {cfg.storage.work_dir}; run `dgr2 data` with this config")
    # The features stage names its local store after the published tables (feature_repo/stage.py).
    return Path(cfg.storage.work_dir) / "feast" / PurePosixPath(features_uri).name


def import_bundle(cfg: Config, feature_store_dir: str | Path, checkpoints: Mapping[Role, tuple[str | Path, ModelInfo]]) -> str:
    """Write a serving bundle into the BentoML model store (``$BENTOML_HOME``); returns its tag.

    A bundle of the same registered versions, config and feature store is reused rather than
    copied again: registered versions never change, and a large model's checkpoint is gigabytes.
    """
    import bentoml

    identity = {
        "models": {decoder: asdict(info) for decoder, (_, info) in checkpoints.items()},
        "config": cfg.model_dump(mode="json"),
        "feature_store_dir": str(Path(feature_store_dir).resolve()),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    try:
        existing = bentoml.models.list(BUNDLE_NAME)
    except bentoml.exceptions.NotFound:  # the first bundle in this store
        existing = []
    for model in existing:
        if model.info.labels.get("bundle_digest") == digest:
            return str(model.tag)
    labels = {"bundle_digest": digest} | {decoder: f"{info.name}/{info.version}" for decoder, (_, info) in checkpoints.items()}
    with bentoml.models.create(BUNDLE_NAME, labels=labels) as model:
        write_bundle(model.path, cfg, checkpoints, feature_store_dir)
    return str(model.tag)


def build_bento(model_tag: str) -> str:
    """``bentoml build`` the service around ``model_tag``; returns the Bento's tag.

    Raises:
        PackagingError: the build failed; the message holds the end of its output.
    """
    env = {**os.environ, BUNDLE_ENV: model_tag, "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), "-o", "tag", str(REPO_ROOT)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT,
    )
    tags = [line.split("__tag__:", 1)[1].strip() for line in done.stdout.splitlines() if "__tag__:" in line]
    if done.returncode != 0 or not tags:
        raise PackagingError(f"bentoml build failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return tags[-1]


def package_service(
    cfg: Config, feature_store_dir: str | Path | None = None, alias: str = "champion", version: str | None = None, build: bool = True
) -> PackagedService:
    """Import a registered student (and its AR teacher) into the BentoML model store and build the Bento.

    Args:
        cfg: the recipe's config (tracking URI and model names, the settings the service uses).
        feature_store_dir: the features stage's ``feature_store_dir``: the service reads user
            histories and item features from this store's online store. None: the store the
            data flow built under ``cfg`` for the student's ``dataset_version`` tag.
        alias: the student's alias to package (``champion``; ``challenger`` to try one out).
        version: a student version number instead of the alias.
        build: also ``bentoml build`` the service; False only imports the models.

    Returns:
        The bundle's model tag, the Bento's tag and the versions packaged.

    Raises:
        PackagingError: no student version at ``alias`` (nothing promoted yet), no registered AR
            teacher in its lineage, no feature store, or the build failed.
    """
    from mlflow.exceptions import MlflowException

    from components.tracking.registry import CHALLENGER, version_by_alias
    from components.tracking.runs import client

    name = cfg.tracking.student_model_name
    if version is not None:
        try:
            student = client(cfg).get_model_version(name, version)
        except MlflowException:
            raise PackagingError(f"{name} has no version {version}") from None
    else:
        student = version_by_alias(cfg, name, alias)
        if student is None:
            raise PackagingError(
                f"{name}@{alias} does not exist: no version has been promoted to {alias} yet. `make run` registers a "
                "new version and promotes it only when it beats the pre-rank floor on valid; `dgr2 report` shows "
                "the last run's gate checks"
            )
    teacher = _teacher_version(cfg, student)
    if feature_store_dir is None:
        feature_store_dir = feature_store_of(cfg, student.tags.get("dataset_version", ""))
    checkpoints: dict[Role, tuple[str | Path, ModelInfo]] = {
        "diffusion": (_checkpoint_dir(cfg, student), ModelInfo(name, str(student.version), None if version else alias))
    }
    checkpoints["ar"] = (_checkpoint_dir(cfg, teacher), ModelInfo(teacher.name, str(teacher.version), None))
    challenger = _shadow_version(cfg, student)
    if challenger is not None:
        checkpoints[SHADOW] = (_checkpoint_dir(cfg, challenger), ModelInfo(name, str(challenger.version), CHALLENGER))
    model_tag = import_bundle(cfg, feature_store_dir, checkpoints)
    return PackagedService(
        model_tag=model_tag,
        bento_tag=build_bento(model_tag) if build else None,
        student=f"{name}/{student.version}",
        teacher=f"{teacher.name}/{teacher.version}",
        shadow=f"{name}/{challenger.version}" if challenger is not None else None,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.package``: package a registered version, print its tags as JSON."""
    import argparse

    from components.config import ConfigError, load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a profile YAML (configs/<profile>.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--version", help="a student version instead of the alias")
    parser.add_argument("--feature-store", help="the Feast store directory (default: the data flow's, from the lineage)")
    parser.add_argument("--no-build", action="store_true", help="import the models only")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        packaged = package_service(cfg, args.feature_store, args.alias, args.version, build=not args.no_build)
    except (ConfigError, PackagingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(packaged)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
