"""The small profile's whole recipe on full Beauty in one GPU call, from data prepared on this machine.

A lent GPU machine has PyTorch and transformers but not this project's orchestration stack, and it
cannot download anything. So the data flow runs here, its three outputs (dataset version, SIDs,
examples: a few MB) travel with the working tree, and the GPU runs the stages directly through
the same ``run_teacher`` and ``run_diffusion`` sequences the Prefect flow uses, returning tables
and the frontier plot, not weights. ``--until`` stops early (``teacher``, ``convert``, ``cft``,
``opd``; default ``rl``, the whole recipe).

Here, once per data change::

    make run                                            # or: dgr2 data --config configs/small.yaml
    python benchmarks/gpu_recipe.py prepare --config configs/small.yaml
    # pydantic is missing on the GPU image: carry its wheels (see benchmarks/gpu_recipe.sh)

On the device (one call, carry ``.dgr2/gpu`` and ``.whl``)::

    bash benchmarks/gpu_recipe.sh                       # writes summary.json, recipe.md, frontier.png to $OUT

The same ``run`` subcommand works on a CPU for a dry run with smaller ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from components.config import load_config  # noqa: E402

BUNDLE = Path(".dgr2/gpu")
DATA_OUTPUTS = ("dataset_uri", "sid_uri", "examples_uri")


def prepare(config: str, overrides: list[str]) -> None:
    """Copy the data flow's outputs for ``config`` into the bundle that travels to the GPU."""
    from flows.data import data_flow

    cfg = load_config(config, overrides)
    outputs = data_flow(cfg.model_dump(mode="json"))["outputs"]
    shutil.rmtree(BUNDLE, ignore_errors=True)
    bundled = {}
    for key in DATA_OUTPUTS:
        source = Path(outputs[key])
        target = BUNDLE / "artifacts" / source.parent.name / source.name
        shutil.copytree(source, target)
        bundled[key] = str(target)
    (BUNDLE / "data_outputs.json").write_text(json.dumps(bundled, indent=1))
    print(f"bundle ready in {BUNDLE}: " + ", ".join(bundled.values()))


def run(config: str, overrides: list[str], out: Path, until: str) -> None:
    """Run the recipe's stages on the bundled data and write the summary, tables and plot to ``out``."""
    import torch

    from components.reporting import frontier_plot, recipe_summary_markdown, teacher_summary_markdown
    from components.recipe.run import direct_runner, recipe_summary, run_diffusion, run_teacher, teacher_model

    storage = [f"storage.artifact_root={BUNDLE / 'artifacts'}", f"storage.work_dir={BUNDLE / 'work'}"]
    cfg = load_config(config, storage + overrides)
    data = json.loads((BUNDLE / "data_outputs.json").read_text())
    started = time.perf_counter()
    runner = direct_runner(cfg)
    inputs = (data["dataset_uri"], data["sid_uri"], data["examples_uri"])
    summary = run_teacher(cfg, *inputs, runner)
    render = teacher_summary_markdown
    if until != "teacher":
        diffusion = run_diffusion(cfg, teacher_model(summary), *inputs, summary["traces_uri"], runner, until)
        summary = recipe_summary(summary, diffusion, teacher_model(summary), cfg.evaluation)
        render = recipe_summary_markdown
    summary["dataset_version"] = Path(data["dataset_uri"]).name
    summary["seconds"] = round(time.perf_counter() - started, 1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    header = [
        f"- command: `python benchmarks/gpu_recipe.py run --config {config} --until {until}"
        + "".join(f" --set {item}" for item in overrides) + "`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}; device: {device}; torch {torch.__version__}",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "recipe.md").write_text("\n".join(header) + render(summary) + "\n")
    if summary.get("sweep") and summary.get("speed"):
        frontier_plot(summary, out / "frontier.png")
    print((out / "recipe.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "run"))
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=BUNDLE / "results")
    parser.add_argument("--until", choices=("teacher", "convert", "cft", "opd", "rl"), default="rl")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.config, args.overrides)
    else:
        run(args.config, args.overrides, args.out, args.until)


if __name__ == "__main__":
    main()
