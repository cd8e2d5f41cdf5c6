"""What every stage shares: its result type and how its output is named.

A stage's output directory is named by the hash of its inputs' URIs, its config slice and the
source of the code that computes it, so re-running an unchanged stage finds its output and does no
work, while a change to any of the three produces a new output (and everything downstream follows).
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import storage

if TYPE_CHECKING:
    from components.config import Config

_PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass
class StageResult:
    """Output URIs and flat metrics of one stage; ``cached`` is True when nothing was recomputed."""

    outputs: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def code_version(*packages: str) -> str:
    """Hash of the Python source of packages or modules named by path from the project root.

    ``code_version("components/candidates", "components/semantic_ids/encoder", "feature_repo")``
    """
    digest = hashlib.sha256()
    for name in sorted(packages):
        root = _PROJECT_DIR / name
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
        if not all(path.is_file() for path in files) or not files:
            raise ValueError(f"code_version: no Python source at {name}")
        for path in files:
            digest.update(str(path.relative_to(_PROJECT_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_key(stage: str, inputs: dict[str, str], config_hash: str, code: str) -> str:
    """Name of a stage's output: hash of (stage, input URIs, config slice hash, code version)."""
    payload = json.dumps({"stage": stage, "inputs": inputs, "config": config_hash, "code": code}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageSpec:
    """What names a stage's output: its config sections and the code packages it runs (paths from the project root)."""

    name: str
    config_sections: tuple[str, ...]
    code: tuple[str, ...]

    def output_uri(self, cfg: "Config", inputs: dict[str, str]) -> str:
        """Where this stage's output for these inputs lives (the orchestrator's cache key too)."""
        key = stage_key(self.name, inputs, cfg.slice_hash(*self.config_sections), code_version(*self.code))
        return storage.join(cfg.storage.artifact_root, self.name, key)


# Every stage that publishes a directory writes its metrics here, so a cache hit returns them.
METRICS_FILE = "metrics.json"


def cached_result(uri: str, output_name: str, work_dir: str | Path) -> StageResult | None:
    """The result of a stage whose output is already published at ``uri``, or None."""
    if not storage.exists(uri):
        return None
    metrics = json.loads((storage.fetch_dir(uri, work_dir) / METRICS_FILE).read_text())
    return StageResult({output_name: uri}, metrics, cached=True)


@contextmanager
def publishing(uri: str, work_dir: str | Path, metrics: dict[str, Any]) -> Iterator[Path]:
    """A staging directory that is published to ``uri`` (with ``metrics``) when the block succeeds.

    The block writes the stage's files and may add to ``metrics``; nothing is published if it
    raises, so a failed stage never leaves a half-written output for a later run to trust.
    """
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="staging-") as staging:
        yield Path(staging)
        (Path(staging) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float))
        storage.publish_dir(staging, uri)
