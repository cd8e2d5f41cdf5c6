"""MLflow runs of a recipe: one parent run per recipe run, one child run per stage.

A child run holds the stage's config slice as params, its step history (loss, reward, tokens/s)
and flat metrics, its output URIs as tags, and artifacts: a trained model's checkpoint, an
evaluation's report, the SID codebook. Runs are created through ``MlflowClient`` with explicit
run ids, because MLflow's active-run stack is thread-local and Prefect runs tasks in threads.

A stage replayed from cache gets a child run too (tagged ``cached``) but does not upload its
checkpoint again when an earlier run of the experiment already did; the tag ``checkpoint_run_id``
points at that run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from components import storage
from components.config import Config
from components.stage import StageSpec

# Log batches stay under MLflow's per-request limits (1000 metrics, 100 params).
_METRICS_PER_BATCH = 900
_PARAMS_PER_BATCH = 90
_MAX_PARAM_CHARS = 6000
PARENT_RUN_TAG = "mlflow.parentRunId"
# What MLflow's client reports once its own HTTP retries gave up on the server (down, or 5xx).
_UNAVAILABLE_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})


def tracking_uri(cfg: Config) -> str:
    """The MLflow store: ``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (set by the
    local stack), else a SQLite file next to the work directory."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{_local_mlflow_dir(cfg) / 'mlflow.db'}"


def _local_mlflow_dir(cfg: Config) -> Path:
    path = Path(cfg.storage.work_dir).resolve().parent / "mlflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow giving up on its tracking store: worth a retry, not a bug."""
    return type(exc).__name__ == "MlflowException" and getattr(exc, "error_code", "") in _UNAVAILABLE_CODES


def client(cfg: Config) -> Any:
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(cfg: Config) -> str:
    """The experiment's id, created on first use; without a tracking server its artifacts go under
    the project data directory rather than into ``./mlruns`` wherever the process runs."""
    mlflow_client = client(cfg)
    experiment = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not tracking_uri(cfg).startswith(("http://", "https://")):
        # A database store without a server (SQLite, or Postgres in the production profile).
        location = (_local_mlflow_dir(cfg) / "artifacts").as_uri()
    return mlflow_client.create_experiment(cfg.tracking.experiment, artifact_location=location)


def git_commit() -> str:
    """The project's git commit (``+dirty`` with uncommitted changes), or ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def config_hash(cfg: Config) -> str:
    """Hash of the whole resolved config, as recorded on every run and model version."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def _flat(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree


def _metric_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . / and spaces; evaluation labels carry '+' and '='.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested metrics dict, keyed ``a.b.c``; booleans and non-finite values dropped."""
    return {
        _metric_key(key): float(value)
        for key, value in _flat(metrics)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def config_params(cfg: Config, sections: tuple[str, ...]) -> dict[str, str]:
    """The named config sections (or single ``section.field`` names) as ``section.key`` params."""
    params = {}
    for name, tree in cfg.config_slice(*sections).items():
        for key, value in _flat(tree, f"{name}."):
            params[key] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {key: value[:_MAX_PARAM_CHARS] for key, value in params.items()}


def _batches(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def log_to_run(
    cfg: Config,
    run_id: str,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    steps: list[dict[str, Any]] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Log params, flat metrics (step 0), a step history (``[{"step": n, "loss": ...}, ...]``) and tags."""
    from mlflow.entities import Metric, Param, RunTag

    mlflow_client = client(cfg)
    now = int(time.time() * 1000)
    metric_rows = [Metric(key, value, now, 0) for key, value in (metrics or {}).items()]
    for row in steps or []:
        values = flat_metrics({k: v for k, v in row.items() if k != "step"})
        metric_rows += [Metric(key, value, now, int(row.get("step", 0))) for key, value in values.items()]
    for batch in _batches(metric_rows, _METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=batch)
    for batch in _batches([Param(key, value) for key, value in (params or {}).items()], _PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=batch)
    if tags:
        mlflow_client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def config_sections(cfg: Config) -> tuple[str, ...]:
    """Every section of the config (all fields but the top-level scalars)."""
    return tuple(name for name, value in cfg if hasattr(value, "model_dump"))


def run_url(cfg: Config, experiment: str, run_id: str) -> str:
    """Where the run shows in the MLflow UI (a local store is viewed with ``mlflow ui`` on port 5000)."""
    return f"{ui_base(cfg)}/#/experiments/{experiment}/runs/{run_id}"


def model_version_url(cfg: Config, name: str, version: str) -> str:
    """Where a registered model version shows in the MLflow UI."""
    return f"{ui_base(cfg)}/#/models/{name}/versions/{version}"


def ui_base(cfg: Config) -> str:
    uri = tracking_uri(cfg)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def ui_command(cfg: Config) -> str:
    """How to open the MLflow UI on this run's store."""
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


@dataclass
class RecipeRuns:
    """The parent run of one recipe run and the child run of each stage logged so far."""

    cfg: Config
    experiment_id: str
    parent_run_id: str
    stage_runs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: Config, run_name: str, tags: dict[str, str]) -> "RecipeRuns":
        """Open the parent run: the whole resolved config as params, git commit and config hash as tags."""
        exp = experiment_id(cfg)
        all_tags = {"git_commit": git_commit(), "config_hash": config_hash(cfg), "profile": cfg.profile} | tags
        run = client(cfg).create_run(exp, run_name=run_name, tags=all_tags)
        runs = cls(cfg, exp, run.info.run_id)
        log_to_run(cfg, runs.parent_run_id, params=config_params(cfg, config_sections(cfg)))
        return runs

    def child(self, name: str, tags: dict[str, str]) -> str:
        """A new child run of the recipe run."""
        run = client(self.cfg).create_run(self.experiment_id, run_name=name, tags={PARENT_RUN_TAG: self.parent_run_id} | tags)
        self.stage_runs[name] = run.info.run_id
        return run.info.run_id

    def log_stage(self, name: str, spec: StageSpec, result: dict[str, Any]) -> str:
        """One child run for a finished stage: config slice, metrics, step history, outputs, artifacts."""
        outputs = result.get("outputs", {})
        tags = {"stage": spec.name, "cached": str(bool(result.get("cached"))).lower()}
        tags |= {f"output.{key}": value for key, value in outputs.items()}
        run_id = self.child(name, tags)
        metrics = flat_metrics(result.get("metrics", {})) | {"stage_seconds": float(result.get("seconds", 0.0))}
        log_to_run(self.cfg, run_id, params=config_params(self.cfg, spec.config_sections), metrics=metrics)
        model_uri = outputs.get("model_uri")
        if model_uri:
            self._log_checkpoint(run_id, model_uri)
        elif outputs.get("evaluation_uri"):
            client(self.cfg).log_dict(run_id, result.get("metrics", {}), "evaluation.json")
        client(self.cfg).set_terminated(run_id)
        return run_id

    def _log_checkpoint(self, run_id: str, model_uri: str) -> None:
        """Step history as metrics; the checkpoint as artifacts unless an earlier run holds it."""
        local = storage.fetch_dir(model_uri, self.cfg.storage.work_dir)
        history = local / "history.json"
        if history.is_file():
            log_to_run(self.cfg, run_id, steps=json.loads(history.read_text()))
        if not self.cfg.tracking.log_checkpoints:
            return
        mlflow_client = client(self.cfg)
        earlier = mlflow_client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.checkpoint_of = '{model_uri}'",
            max_results=1,
        )
        if earlier:
            log_to_run(self.cfg, run_id, tags={"checkpoint_run_id": earlier[0].info.run_id})
            return
        mlflow_client.log_artifacts(run_id, str(local), "checkpoint")
        log_to_run(self.cfg, run_id, tags={"checkpoint_of": model_uri, "checkpoint_run_id": run_id})

    def log_data(self, data: dict[str, Any], spec_sections: tuple[str, ...]) -> str:
        """The data flow as one child run: dataset input (with its version), SID report, floors."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        outputs = data["outputs"]
        version = data["dataset_version"]
        run_id = self.child("data", {"stage": "data", "dataset_version": version} | {f"output.{k}": v for k, v in outputs.items()})
        metrics = flat_metrics({"dataset": data["dataset"], "semantic_ids": data["semantic_ids"], "floors": data["floors"]})
        log_to_run(self.cfg, run_id, params=config_params(self.cfg, spec_sections), metrics=metrics)
        work_dir = self.cfg.storage.work_dir
        interactions = pd.read_parquet(storage.fetch_dir(outputs["dataset_uri"], work_dir) / "interactions.parquet")
        dataset = mlflow.data.from_pandas(interactions, source=outputs["dataset_uri"], name=f"interactions@{version}")
        tags = [InputTag("mlflow.data.context", "training"), InputTag("dataset_version", version)]
        for run in (run_id, self.parent_run_id):
            client(self.cfg).log_inputs(run, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])
        client(self.cfg).log_artifacts(run_id, str(storage.fetch_dir(outputs["sid_uri"], work_dir)), "semantic_ids")
        client(self.cfg).set_terminated(run_id)
        return run_id

    def finish(self, status: str, summary: dict[str, Any] | None = None, files: dict[str, Path] | None = None) -> None:
        """Close the parent run with the recipe summary, headline metrics and any plots."""
        mlflow_client = client(self.cfg)
        if summary is not None:
            mlflow_client.log_dict(self.parent_run_id, summary, "summary.json")
        for name, path in (files or {}).items():
            mlflow_client.log_artifact(self.parent_run_id, str(path), name)
        mlflow_client.set_terminated(self.parent_run_id, status=status)

    def fail(self) -> None:
        """Mark the parent run failed, unless the tracking store is what failed: then the run stays
        open and the caller's own error is the one to report."""
        try:
            self.finish("FAILED")
        except Exception as exc:  # noqa: BLE001 - only an unavailable store is expected here
            if not tracking_unavailable(exc):
                raise
