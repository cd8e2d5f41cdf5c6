"""The stage table is the one place a stage is described: its key inputs match its function's
inputs, and the Prefect task generated from a row binds them by name and keys on the output."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from prefect.utilities.callables import call_with_parameters

from components.recipe.launch import TRAINING_STAGES
from components.config import Config
from components.evaluation.stage import evaluation_inputs
from components.recipe.stages import STAGES, RecipeStage
from components.stage import StageResult, publishing
from flows.stages import STAGE_TASKS, stage_task
from tests.import_graph import imports


@pytest.mark.parametrize("name", list(STAGES))
def test_each_row_keys_on_exactly_its_functions_inputs(name: str) -> None:
    stage = STAGES[name]
    assert list(inspect.signature(stage.function).parameters)[0] == "cfg"
    # The output key is computed from the same inputs, in the same order, as the function's own.
    key_parameters = inspect.signature(stage.key_inputs).parameters
    assert len(key_parameters) == len(stage.input_names)
    named = stage.key_inputs(*(f"uri-{i}" for i in range(len(stage.input_names))))
    assert set(named.values()) <= {f"uri-{i}" for i in range(len(stage.input_names))}


# Modules that read an upstream stage's published output: that output is named by the stage's
# input URIs, so the reader need not be in the stage's own code.
INPUT_READERS = {"components.candidates.examples", "components.data.ingest", "components.traces.build", "components.semantic_ids.build"}
BASE = ("components.config", "components.stage", "components.storage")


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_key_hashes_the_code_its_function_module_imports(name: str) -> None:
    """A stage's cache key must change when code it runs changes, else a stale output is reused."""
    stage = STAGES[name]
    imported = imports()[stage.function.__module__]
    hashed = [path.replace("/", ".") for path in stage.spec.code]
    unhashed = sorted(
        module for module in imported - INPUT_READERS
        if not any(module == prefix or module.startswith(prefix + ".") for prefix in (*hashed, *BASE))
    )
    assert not unhashed, f"{name}'s StageSpec.code leaves out {unhashed}"


def test_the_torchrun_launcher_takes_the_rows_that_train() -> None:
    assert TRAINING_STAGES == ("midtrain", "sft", "rl", "cft", "opd", "diffusion_rl")


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_task_is_named_by_its_function_signature(name: str) -> None:
    parameters = list(inspect.signature(STAGE_TASKS[name].fn).parameters)
    assert parameters == ["cfg", *STAGES[name].input_names]
    assert STAGE_TASKS[name].name == name.replace("_", "-")


def test_a_stage_tasks_cache_key_is_its_published_output(make_config) -> None:
    cfg = make_config()
    key = STAGE_TASKS["evaluate"].cache_key_fn
    # Prefect passes every bound parameter; the defaults (threshold, scope) apply when left out.
    parameters = {"cfg": cfg.model_dump(mode="json"), "model_uri": "m", "dataset_uri": "d", "sid_uri": "s", "examples_uri": "e"}
    uri = STAGES["evaluate"].spec.output_uri(cfg, {"model": "m", "dataset": "d", "sids": "s", "examples": "e"})
    assert key(None, parameters) is None  # nothing published yet: run the task
    with publishing(uri, cfg.storage.work_dir, {}):
        pass
    assert key(None, parameters) == hashlib.sha256(uri.encode()).hexdigest()
    # Another threshold is another output.
    assert key(None, parameters | {"threshold": "0.9", "scope": ""}) is None


def test_a_stage_task_calls_its_function_with_the_inputs_prefect_binds(make_config) -> None:
    calls = []

    def probe(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str, threshold: str = "", scope: str = "") -> StageResult:
        calls.append((type(cfg), model_uri, dataset_uri, sid_uri, examples_uri, threshold, scope))
        return StageResult({"evaluation_uri": "out"})

    probe_task = stage_task("probe", RecipeStage(STAGES["evaluate"].spec, probe, evaluation_inputs))
    parameters = {"cfg": make_config().model_dump(mode="json"), "model_uri": "m", "dataset_uri": "d", "sid_uri": "s", "examples_uri": "e"}
    # Prefect hands a task its bound parameters by name, those with defaults included.
    result = call_with_parameters(probe_task.fn, parameters | {"threshold": "0.9", "scope": "gate"})
    assert result["outputs"] == {"evaluation_uri": "out"}
    assert calls == [(Config, "m", "d", "s", "e", "0.9", "gate")]
