"""Registered models ``gr2-ar`` (the AR teacher) and ``diffusion-gr2`` (the block-diffusion student).

Each version is the checkpoint logged as an MLflow pyfunc (:mod:`components.tracking.pyfunc`) in
the child run of the stage that trained it, tagged with its lineage: dataset version, stage,
parent model version, config hash, git commit and the content-addressed ``model_uri`` in the
artifact root. Registering a ``model_uri`` that already has a version returns that version, so
re-running an unchanged recipe adds no versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import storage
from components.config import Config
from components.tracking.pyfunc import CHECKPOINT, ReRankerModel
from components.tracking.runs import client, config_hash, git_commit

_PROJECT_PACKAGE = Path(__file__).resolve().parents[1]
# What the pyfunc needs at load time besides the project package (shipped as code_paths).
_PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.*", "tokenizers>=0.22", "mlflow==3.17.2", "pydantic>=2.13,<3", "pyyaml>=6"]


# The aliases the gates move: the version served, and the last one that went through the gates.
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    model_uri: str
    run_id: str

    @property
    def ref(self) -> str:
        """``name/version``, the form used in lineage tags."""
        return f"{self.name}/{self.version}"


def find_version(cfg: Config, name: str, model_uri: str) -> ModelVersion | None:
    """The registered version of ``name`` holding ``model_uri``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client(cfg).search_model_versions(f"name = '{name}' and tags.model_uri = '{model_uri}'")
    except MlflowException:
        return None
    if not versions:
        return None
    found = max(versions, key=lambda v: int(v.version))
    return ModelVersion(name, str(found.version), model_uri, found.run_id)


def register(cfg: Config, name: str, model_uri: str, run_id: str, stage: str, dataset_version: str, parent: str) -> ModelVersion:
    """Log ``model_uri``'s checkpoint as a pyfunc in ``run_id`` and register it as a version of ``name``.

    Args:
        name: the registered model (``tracking.teacher_model_name`` or ``student_model_name``).
        model_uri: a ``save_model`` directory in the artifact root.
        run_id: the child run of the stage that trained it.
        stage: that stage's name (``rl``, ``diffusion_rl``...).
        dataset_version: the data it was trained on.
        parent: the model it started from: a ``name/version`` ref, or a description of its source.
    """
    if (existing := find_version(cfg, name, model_uri)) is not None:
        return existing
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    mlflow_client = client(cfg)
    checkpoint = storage.fetch_dir(model_uri, cfg.storage.work_dir)
    signature = infer_signature(["<prompt>"], ["<answer>"], params={"threshold": cfg.evaluation.serving_threshold})
    mlflow.set_tracking_uri(mlflow_client.tracking_uri)
    # The fluent API's active run is per thread; this one is the stage's (already finished) child run.
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ReRankerModel(cfg.evaluation.max_new_tokens, cfg.evaluation.serving_threshold),
            artifacts={CHECKPOINT: str(checkpoint)},
            code_paths=[str(_PROJECT_PACKAGE)],
            pip_requirements=_PIP_REQUIREMENTS,
            signature=signature,
        )
    tags = {
        "model_uri": model_uri,
        "dataset_version": dataset_version,
        "catalog": cfg.data.catalog_name,
        "stage": stage,
        "parent_model_version": parent,
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(),
    }
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # A tracking server accepts a logged model's ``models:/m-<id>`` source only with its id.
    version = mlflow_client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id)
    return ModelVersion(name, str(version.version), model_uri, run_id)


def version_by_alias(cfg: Config, name: str, alias: str) -> Any | None:
    """The MLflow model version holding ``alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_checkpoint(cfg: Config, version: Any) -> str:
    """A storage URI holding a registered version's checkpoint: its ``model_uri`` in the artifact
    root when still there, else the copy logged with the version, downloaded into the work dir."""
    import mlflow.artifacts
    from mlflow.models import Model

    model_uri = version.tags.get("model_uri", "")
    if model_uri and storage.exists(model_uri):
        return model_uri
    target = Path(cfg.storage.work_dir) / "registry" / f"{version.name}-{version.version}"
    if not (target / "MLmodel").is_file():
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(target), tracking_uri=client(cfg).tracking_uri
        )
    # The pyfunc keeps each artifact under a path of its own, recorded in its MLmodel file.
    artifacts = Model.load(str(target / "MLmodel")).flavors["python_function"]["artifacts"]
    return str(target / artifacts[CHECKPOINT]["path"])
