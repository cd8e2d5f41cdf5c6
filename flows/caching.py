"""Cache keys for stage tasks: the stage's content-addressed output, if it still exists.

A stage's output URI is the hash of its input URIs, config slice and code version
(components.stage.StageSpec), so the same key means the same work. Returning no key when the output
is gone (someone cleaned the artifact root) makes Prefect run the task again instead of replaying
a result that points at a deleted directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable

from components import storage
from components.storage import StorageError
from components.config import Config
from components.stage import StageSpec, code_version
from components.tracking.runs import tracking_unavailable


def _published(_cfg: Config, uri: str) -> bool:
    return storage.exists(uri)


def output_cache_key(
    spec: StageSpec,
    inputs_of: Callable[[dict[str, Any]], dict[str, str]],
    ready: Callable[[Config, str], bool] = _published,
) -> Callable[..., str | None]:
    """A Prefect ``cache_key_fn`` for a task whose parameters are ``cfg`` (a dict) plus input URIs.

    ``ready`` says whether the output is still usable (by default: published); a stage with local
    state besides its published output (the Feast store) passes its own check.
    """

    def key(_context: Any, parameters: dict[str, Any]) -> str | None:
        cfg = Config.model_validate(parameters["cfg"])
        uri = spec.output_uri(cfg, inputs_of(parameters))
        return hashlib.sha256(uri.encode()).hexdigest() if ready(cfg, uri) else None

    return key


def check_cache_key(sections: tuple[str, ...], code: tuple[str, ...], input_names: tuple[str, ...]) -> Callable[..., str]:
    """A ``cache_key_fn`` for checks that publish nothing (validation): inputs + config slice + code."""

    def key(_context: Any, parameters: dict[str, Any]) -> str:
        cfg = Config.model_validate(parameters["cfg"])
        payload = {
            "inputs": {name: parameters[name] for name in input_names},
            "config": cfg.slice_hash(*sections),
            "code": code_version(*code),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    return key


def io_error(_task: Any, _run: Any, state: Any) -> bool:
    """A ``retry_condition_fn``: retry only storage and network failures (object store, tracking
    server); bad data, a failed gate or a bug fails at once."""
    try:
        state.result()
    except (StorageError, OSError):
        return True
    except Exception as exc:  # noqa: BLE001 - sorted into transient and not below
        return tracking_unavailable(exc)
    return False


def run_stage(stage_task: Any, *args: Any) -> dict[str, Any]:
    """Run a stage task; record its wall time in this run and whether Prefect replayed it from cache."""
    started = time.perf_counter()
    state = stage_task(*args, return_state=True)
    result = dict(state.result())
    result["cached"] = bool(result.get("cached")) or state.name == "Cached"
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def task_runner(
    tasks: dict[str, Any],
    cfg: dict[str, Any],
    logger: Any,
    on_stage: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> Callable[..., dict[str, Any]]:
    """A ``StageRunner`` over Prefect tasks: ``run(label, stage, *input URIs)`` runs ``tasks[stage]``
    as a task named ``label``, logs its time, and hands ``(label, stage, result)`` to ``on_stage``
    (the recipe's tracking) once it has finished."""

    def run(label: str, stage: str, *inputs: str) -> dict[str, Any]:
        result = run_stage(tasks[stage].with_options(name=label), cfg, *inputs)
        logger.info("%s: %s s%s", label, result["seconds"], " (cached)" if result["cached"] else "")
        if on_stage is not None:
            on_stage(label, stage, result)
        return result

    return run
