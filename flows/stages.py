"""One Prefect task per row of the recipe's stage table (``components.recipe.stages.STAGES``).

Each task takes the resolved config as a dict plus the stage function's own inputs (named as in
its signature, so the Prefect UI shows them), runs the function, and is cached on the stage's
content-addressed output: the same key means the same work, and a deleted output runs again.
"""

from __future__ import annotations

import inspect
from typing import Any

from prefect import Task, task

from components.config import Config
from components.recipe.stages import STAGES, RecipeStage
from flows.caching import output_cache_key


def stage_task(name: str, stage: RecipeStage) -> Task[..., dict[str, Any]]:
    """The Prefect task of one stage: ``task(cfg, *inputs)`` -> the stage's ``StageResult`` as a dict."""
    signature = stage.signature

    def run(cfg: dict[str, Any], *args: str, **kwargs: str) -> dict[str, Any]:
        # Prefect may pass inputs that have defaults (evaluation's threshold, scope) by name.
        return stage.function(Config.model_validate(cfg), *args, **kwargs).to_dict()

    def key_inputs(parameters: dict[str, Any]) -> dict[str, str]:
        bound = signature.bind(**{k: v for k, v in parameters.items() if k in signature.parameters})
        bound.apply_defaults()
        return stage.key_inputs(*bound.args)

    # Prefect binds a call's arguments by the function's signature: cfg, then the stage's inputs.
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("cfg", inspect.Parameter.POSITIONAL_OR_KEYWORD), *signature.parameters.values()]
    )
    run.__name__ = run.__qualname__ = f"{name}_task"
    return task(run, name=name.replace("_", "-"), cache_key_fn=output_cache_key(stage.spec, key_inputs), persist_result=True)


STAGE_TASKS: dict[str, Task[..., dict[str, Any]]] = {name: stage_task(name, stage) for name, stage in STAGES.items()}
