"""Human-readable summaries (markdown) shared by the CLI, Prefect artifacts and benchmarks."""

from __future__ import annotations

from typing import Any

FLOOR_METRICS = ("recall_at_1", "recall_at_3", "recall_at_5", "ndcg_at_3", "ndcg_at_5", "ndcg_at_10")


def _cell(stat: dict[str, float]) -> str:
    # The bootstrap interval is close to symmetric at these sample sizes; the JSON keeps both ends.
    return f"{stat['mean']:.4f} ±{(stat['ci_high'] - stat['ci_low']) / 2:.4f}"


def metrics_table(slices: dict[str, dict[str, Any]], metrics: tuple[str, ...] = FLOOR_METRICS) -> str:
    """Markdown table, one column per named slice and one row per metric: mean ± half the 95% CI."""
    names = list(slices)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| n | " + " | ".join(f"{slices[name]['n']:,}" for name in names) + " |")
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_cell(slices[name][metric]) for name in names) + " |")
    return "\n".join(lines)


def data_summary_markdown(summary: dict[str, Any]) -> str:
    """The data flow's summary: dataset version and stats, SID report, floor table, timings."""
    data = summary["dataset"]
    sid = summary["semantic_ids"]
    lines = [
        f"# Data flow: dataset version `{summary['dataset_version']}`",
        "",
        f"- users {data['users']:,}, items {data['items']:,}, interactions {data['interactions']:,}",
        f"- examples: " + ", ".join(f"{k} {v:,}" for k, v in summary["examples"].items()),
        f"- semantic IDs ({sid['levels']} tokens): unique {sid['unique_rate']:.2%} "
        f"(before the last level {sid['unique_rate_before_last_level']:.2%}), longest collision chain "
        f"{sid['longest_collision_chain']}, codebook utilisation "
        + ", ".join(f"{k.removeprefix('utilization_')} {v:.0%}" for k, v in sid.items() if k.startswith("utilization_")),
        f"- leakage check (train vs valid floor R@1, relative gap <= 20%): "
        f"{summary['leakage_check']['train_valid_recall_at_1_relative_gap']:.1%} "
        f"({'passed' if summary['leakage_check']['passed'] else 'FAILED'})",
        "",
        "## Floor: the pre-rank order (mean ± half-width of the 95% bootstrap CI)",
        "",
        metrics_table(summary["floors"]),
        "",
        "## Stages",
        "",
        "| stage | seconds | cached |",
        "|---|---|---|",
        *(f"| {name} | {secs} | {summary['cached'][name]} |" for name, secs in summary["stage_seconds"].items()),
        "",
        f"Total: {summary['seconds']} s",
    ]
    return "\n".join(lines)
