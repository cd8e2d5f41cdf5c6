"""Human-readable summaries (markdown) shared by the CLI, Prefect artifacts and benchmarks."""

from __future__ import annotations

from typing import Any

FLOOR_METRICS = ("recall_at_1", "recall_at_3", "recall_at_5", "ndcg_at_3", "ndcg_at_5", "ndcg_at_10")


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]"


def metrics_table(rows: dict[str, dict[str, Any]], metrics: tuple[str, ...] = FLOOR_METRICS) -> str:
    """Markdown table: one row per named slice, mean [95% CI] per metric."""
    header = "| slice | n | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for name, stats in rows.items():
        lines.append(f"| {name} | {stats['n']} | " + " | ".join(_cell(stats[m]) for m in metrics) + " |")
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
        "## Floor: the pre-rank order (mean [95% bootstrap CI])",
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
