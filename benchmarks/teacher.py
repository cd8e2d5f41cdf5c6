"""The recipe's tables (floor, AR teacher, block-diffusion models) and training throughput.

    python benchmarks/teacher.py --config configs/tiny.yaml [--command train-cft] [--set section.key=value ...]

Runs ``dgr2 train-teacher --json`` (or ``train-cft`` / ``train-opd`` / ``train-rl``, which add the
block-diffusion stages, the tau sweep, the speed comparison and the frontier plot) as a user would; the data flow's outputs are reused when cached and its
time is not counted. Writes ``benchmarks/results/<teacher|recipe>_<name>.md``: the command, machine
and date, the stages' wall time, each training stage's steps and tokens/s, and the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cli_run import run_dgr2  # noqa: E402
from components.reporting import frontier_plot, recipe_summary_markdown, teacher_summary_markdown  # noqa: E402

TRAINING_STAGES = ("midtrain", "sft", "rl", "cft", "opd", "diffusion_rl")


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def results_markdown(summary: dict) -> str:
    """Training throughput per stage, then the comparison tables."""
    lines = ["## Training throughput", "", "| stage | steps | throughput | wall s |", "|---|---|---|---|"]
    for name in TRAINING_STAGES:
        metrics = summary["stage_metrics"].get(name)
        if metrics:
            # The loop counts loss-weighted tokens where a batch says how many, else rows (RL: prompts).
            unit = "prompts/s (each with its rollouts)" if name in ("rl", "opd", "diffusion_rl") else "loss tokens/s"
            lines.append(f"| {name} | {metrics['steps']} | {metrics['tokens_per_s']:,.1f} {unit} | {metrics['wall_time_s']:.0f} |")
    render = recipe_summary_markdown if "sweep" in summary else teacher_summary_markdown
    lines += ["", "#" + render(summary), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--command", choices=("train-teacher", "train-cft", "train-opd", "train-rl"), default="train-teacher")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--name", help="results file suffix; default: the profile name")
    args = parser.parse_args()
    wall_s, summary = run_dgr2(args.command, args.config, args.overrides)

    stages_s = sum(stage["seconds"] for stage in summary["stages"].values())
    profile = args.name or Path(args.config).stem
    kind = "teacher" if args.command == "train-teacher" else "recipe"
    shown = " ".join(
        ["python benchmarks/teacher.py --config", args.config, f"--command {args.command}", *(f"--set {item}" for item in args.overrides)]
    )
    header = [
        f"# {'AR teacher' if kind == 'teacher' else 'Diffusion-GR2 recipe (' + args.command + ')'}, `{profile}`",
        "",
        f"- command: `{shown}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}; device: {_device()}; Python {platform.python_version()}",
        f"- stages (traces to the last evaluation, data flow excluded): {stages_s:.0f} s; whole command {wall_s:.0f} s",
    ]
    lines = [*header, "", results_markdown(summary)]
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{kind}_{profile}.md"
    # Records are committed: the checkout's own path (in the MLflow store URI) is written as $PWD.
    out.write_text("\n".join(lines).replace(str(REPO_ROOT), "$PWD"))
    (args.results / f"{kind}_{profile}.json").write_text(json.dumps(summary, indent=1, default=str).replace(str(REPO_ROOT), "$PWD"))
    if summary.get("sweep") and summary.get("speed"):
        plot = frontier_plot(summary, args.results / f"{kind}_{profile}_frontier.png")
        out.write_text(out.read_text() + f"\n\n![accuracy-throughput frontier]({plot.name})\n")
    print(f"stages {stages_s:.0f} s -> {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}")


if __name__ == "__main__":
    main()
