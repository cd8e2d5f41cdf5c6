"""Run one training stage outside Prefect: in one process, or on several under ``torchrun`` (DDP).

Every rank runs the same stage function the flows call (a row of ``components.recipe.stages.
STAGES``); the shared loop joins the process group from torchrun's environment,
every rank trains on its slice of each batch, and rank 0 alone publishes the model and prints
the stage's result as one JSON object on stdout. The output goes to the same content-addressed
URI the flow's task would compute, so a later ``dgr2`` run with the same config and inputs finds
it and trains nothing::

    python -m components.recipe.launch sft --config configs/tiny.yaml \\
        --input model=URI --input dataset=URI --input sid=URI --input traces=URI
    python -m torch.distributed.run --standalone --nproc_per_node=8 -m components.recipe.launch cft \\
        --config configs/paper-8b.yaml --set model.base_model=/models/Qwen3-8B \\
        --input model=URI --input dataset=URI --input sid=URI --input traces=URI

The inputs are the stage function's URI arguments without their ``_uri`` suffix (``--help``
lists them per stage). Every stage's batch size (prompts for rl, opd and diffusion_rl) must be a
multiple of the number of processes. Several nodes need ``storage.artifact_root`` on S3 (or a
shared disk) and ``storage.work_dir`` on a disk all ranks share, since every rank resumes from
the checkpoints rank 0 writes there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from components.config import ConfigError, load_config
from components.stage import StageResult
from components.storage import StorageError
from components.recipe.stages import STAGES

# The stages that train with the shared loop. The others (traces, base_model, convert, evaluate,
# speed) have no DDP path: under torchrun every rank would repeat the same work.
TRAINING_STAGES = tuple(name for name, stage in STAGES.items() if stage.trains)
_URI_SUFFIX = "_uri"


def stage_inputs(stage: str) -> list[str]:
    """The ``--input`` names a training stage takes, in its function's argument order."""
    return [name.removesuffix(_URI_SUFFIX) for name in STAGES[stage].input_names if name.endswith(_URI_SUFFIX)]


def _parse_inputs(stage: str, items: Sequence[str]) -> list[str]:
    """``name=URI`` items -> the stage's URIs in argument order; ConfigError names what is wrong."""
    given: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not uri:
            raise ConfigError(f"--input {item!r} must look like name=URI")
        given[name.strip()] = uri.strip()
    expected = stage_inputs(stage)
    if set(given) != set(expected):
        missing, unknown = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        raise ConfigError(f"stage {stage} takes --input {', '.join(expected)}; missing {missing}, unknown {unknown}")
    return [given[name] for name in expected]


def run_stage(stage: str, config: str | None, overrides: Sequence[str], inputs: Sequence[str]) -> StageResult:
    """Load the config and run ``stage`` on the ``name=URI`` inputs (on every rank under torchrun).

    Args:
        stage: one of ``TRAINING_STAGES``.
        config: a profile YAML, or None for the embedded defaults.
        overrides: ``section.key=value`` strings.
        inputs: ``name=URI`` strings, one per name in :func:`stage_inputs`.

    Returns:
        The stage's result; on ranks other than 0 the output URI may not be published yet.

    Raises:
        ConfigError: a bad config, override or input list, or a batch size that torchrun's
            ``WORLD_SIZE`` processes cannot split evenly.
    """
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; known: {', '.join(TRAINING_STAGES)}")
    cfg = load_config(config, list(overrides))
    uris = _parse_inputs(stage, inputs)
    # The loop would refuse an uneven split only at the first batch, after loading the model.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size = getattr(cfg, stage).training(cfg.training).batch_size
    if batch_size % world_size:
        raise ConfigError(f"{stage}.batch_size {batch_size} is not a multiple of the {world_size} processes")
    return STAGES[stage].function(cfg, *uris)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (2 for a bad config, input or missing output)."""
    parser = argparse.ArgumentParser(
        prog="python -m components.recipe.launch",
        description="Run one training stage in this process or, under torchrun, on every rank (DDP).",
        epilog="\n".join(f"{stage}: --input {' --input '.join(f'{n}=URI' for n in stage_inputs(stage))}" for stage in TRAINING_STAGES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=TRAINING_STAGES)
    parser.add_argument("--config", "-c", help="profile YAML, e.g. configs/tiny.yaml (default: embedded defaults)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="section.key=value (repeatable)")
    parser.add_argument("--input", "-i", dest="inputs", action="append", default=[], help="name=URI (repeatable)")
    args = parser.parse_args(argv)
    # The loop logs its device, world size and precision; progress goes to stderr.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        # Libraries print to stdout; it carries only the result object.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_stage(args.stage, args.config, args.overrides, args.inputs)
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # torchrun sets RANK; only rank 0 has published the output the result names.
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result.to_dict() | {"seconds": round(time.perf_counter() - started, 2)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
