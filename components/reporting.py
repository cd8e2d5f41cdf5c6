"""Human-readable summaries (markdown) shared by the CLI, Prefect artifacts and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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
        "- examples: " + ", ".join(f"{k} {v:,}" for k, v in summary["examples"].items()),
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


def _extra_cell(stat: dict[str, Any] | None, key: str) -> str:
    if stat is None or key not in stat:
        return "-"
    return f"{stat[key]:.2%}" if key.endswith("rate") else f"{stat[key]:,.1f}"


def model_comparison_table(slices: dict[str, dict[str, Any]], decode: dict[str, dict[str, Any] | None]) -> str:
    """Models side by side on one slice: the metrics with CIs, then valid and copy rates and decode cost.

    Args:
        slices: column name -> a scored slice (``evaluate_decoder``'s ``all``/``test_sample`` or a floor).
        decode: column name -> ``evaluate_decoder``'s ``decode`` block, None for the floor.
    """
    table = metrics_table(slices)
    names = list(slices)
    rows = [
        ("valid rate", lambda n: _extra_cell(slices[n], "valid_rate") if decode.get(n) else "-"),
        ("copied pre-rank order", lambda n: _extra_cell(slices[n], "copied_pre_rank_rate")),
        ("mean output tokens", lambda n: _extra_cell(decode.get(n), "mean_output_tokens")),
        ("tokens per forward", lambda n: _extra_cell(decode.get(n), "tokens_per_forward")),
        ("decode tokens/s", lambda n: _extra_cell(decode.get(n), "decode_tokens_per_s")),
    ]
    return "\n".join([table, *(f"| {label} | " + " | ".join(cell(n) for n in names) + " |" for label, cell in rows)])


def teacher_summary_markdown(summary: dict[str, Any]) -> str:
    """The AR teacher's summary: floor vs SFT vs RL on every evaluated slice, then stage facts."""
    return _summary_markdown(summary, "AR teacher (GR2)")


def recipe_summary_markdown(summary: dict[str, Any]) -> str:
    """The recipe's summary: table 1 (floor, AR teacher, every block-diffusion model at tau = 1 and
    the final one at the serving tau) on every evaluated slice, table 2 (the final model's tau
    sweep), the decode speed comparison, then stage facts."""
    return _summary_markdown(summary, "Diffusion-GR2 recipe")


def _speed_reference(speed: dict[str, Any]) -> dict[str, Any]:
    """The speed comparison's largest batch (the serving regime), or {} when there is none."""
    batches = sorted((k for k in speed if k.startswith("batch_")), key=lambda k: int(k.removeprefix("batch_")))
    return speed[batches[-1]] if batches else {}


def sweep_table(summary: dict[str, Any]) -> str:
    """Table 2: the final model at each tau on the test split (all scored users), with the speedup
    over AR from the speed comparison's largest batch."""
    reference = _speed_reference(summary.get("speed", {}))
    lines = [
        "| decoder | users | Recall@1 | NDCG@3 | valid rate | tokens per forward | decode tokens/s | speedup vs AR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    teacher = summary["evaluations"].get("SFT+RL", summary["evaluations"].get("SFT"))
    rows = ([("AR GR2", teacher, reference.get("ar"))] if teacher else []) + [
        (f"{summary['final']} tau={tau}", report, reference.get(f"tau={float(tau)}")) for tau, report in summary["sweep"].items()
    ]
    for name, report, speed in rows:
        test = report["test"]["all"]
        speedup = f"{speed['speedup']:.2f}x" if speed and "speedup" in speed else ("1.00x" if speed else "-")
        lines.append(
            f"| {name} | {test['n']:,} | {test['recall_at_1']['mean']:.4f} | {test['ndcg_at_3']['mean']:.4f} | {test['valid_rate']:.2%} | "
            f"{report['test']['decode']['tokens_per_forward']:.2f} | {report['test']['decode']['decode_tokens_per_s']:,.0f} | {speedup} |"
        )
    speculative = reference.get("speculative")
    if teacher and speculative:
        # Lossless by construction: the teacher's answers, so its accuracy; speed from the comparison.
        test = teacher["test"]["all"]
        lines.append(
            f"| speculative (AR GR2's output) | {test['n']:,} | {test['recall_at_1']['mean']:.4f} | {test['ndcg_at_3']['mean']:.4f} | "
            f"{test['valid_rate']:.2%} | {speculative['tokens_per_forward']:.2f} | {speculative['decode_tokens_per_s']:,.0f} | "
            f"{speculative['speedup']:.2f}x |"
        )
        lines += [
            "",
            f"The speculative row decodes the AR teacher's own output (the same answers on "
            f"{speculative['same_output_as_ar']:.0%} of the speed prompts), so it carries the teacher's accuracy; "
            "its tokens per forward (both models' forwards) and tokens/s come from the speed comparison.",
        ]
    return "\n".join(lines)


def html_page(markdown: str, title: str, images: Sequence[Path] = ()) -> str:
    """A standalone HTML page: the Markdown (tables included) and the PNG images inlined, so the
    one file opens anywhere (an MLflow artifact, a Prefect artifact's link, a browser)."""
    import base64
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    figures = "".join(
        f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for path in images
    )
    style = "body{font-family:sans-serif;max-width:80em;margin:auto}table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:2px 8px}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style></head>'
        f"<body>{body}{figures}</body></html>\n"
    )


def frontier_plot(summary: dict[str, Any], path: str | Path) -> Path:
    """Recall@1 against decode tokens/s of the final model at each tau, the AR teacher marked; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = _speed_reference(summary["speed"])
    points = [
        (float(tau), report["test"]["all"]["recall_at_1"]["mean"], reference[f"tau={float(tau)}"]["decode_tokens_per_s"])
        for tau, report in summary["sweep"].items()
    ]
    teacher = summary["evaluations"].get("SFT+RL", summary["evaluations"].get("SFT"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[2] for p in points], [p[1] for p in points], "o-", label=f"{summary['final']} (block diffusion)")
    for index, (tau, recall, speed) in enumerate(points):
        # Staggered labels stay readable when the points sit close together.
        ax.annotate(f"tau={tau:g}", (speed, recall), textcoords="offset points", xytext=(4, 4 + 10 * index), fontsize=8)
    ax.plot([reference["ar"]["decode_tokens_per_s"]], [teacher["test"]["all"]["recall_at_1"]["mean"]], "s", color="black", label="AR GR2")
    ax.axhline(teacher["test"]["all"]["floor"]["recall_at_1"]["mean"], color="grey", linestyle="--", linewidth=1, label="pre-rank floor")
    ax.set_xlabel(f"decode tokens/s ({summary['speed']['device']})")
    ax.set_ylabel("test Recall@1")
    ax.set_title("Accuracy-throughput frontier")
    # Headroom for the staggered labels, which would otherwise run into the title.
    ax.margins(y=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def speed_table(speed: dict[str, Any]) -> str:
    """AR vs block decoding at each batch size: tokens/s, tokens per forward and speedup."""
    lines = [
        f"Decode speed on {speed['device']} (greedy, same prompts, same process)",
        "",
        "| batch | decoder | tokens/s | tokens per forward | mean output tokens | speedup vs AR |",
        "|---|---|---|---|---|---|",
    ]
    for key, entries in speed.items():
        if not key.startswith("batch_"):
            continue
        for decoder, entry in entries.items():
            speedup = f"{entry['speedup']:.2f}x" if "speedup" in entry else "1.00x"
            if "mean_accepted_length" in entry:
                decoder = f"{decoder} ({entry['mean_accepted_length']:.2f} accepted per check, AR's output on {entry['same_output_as_ar']:.0%})"
            lines.append(
                f"| {key.removeprefix('batch_')} | {decoder} | {entry['decode_tokens_per_s']:,.1f} | "
                f"{entry['tokens_per_forward']:.2f} | {entry['mean_output_tokens']:.1f} | {speedup} |"
            )
    return "\n".join(lines)


def promotion_markdown(version: dict[str, Any], decision: dict[str, Any]) -> str:
    """The promotion decision: the version, what it was compared with, and every gate check."""
    verdict = "promoted to champion" if decision["promote"] else "stays challenger (not promoted)"
    against = f"champion version {decision['champion_version']}" if decision.get("champion_version") else "no champion yet"
    lines = [f"## Promotion: `{version['name']}` version {version['version']} {verdict}", "", f"Compared with {against}:", ""]
    lines += [f"- {check}" for check in decision["checks"]]
    return "\n".join(lines + ([f"- decision: {decision['reason']}"] if decision.get("reason") else []))


def _summary_markdown(summary: dict[str, Any], title: str) -> str:
    evaluations = summary["evaluations"]
    lines = [f"# {title}: dataset version `{summary['dataset_version']}`", ""]
    # The floor column comes from the model scored on the most users (intermediate models may be
    # scored on fewer, the quick scope); each model's own floor comparison is listed below the table.
    first = max(evaluations.values(), key=lambda report: report["test"]["all"]["n"])
    # The test sample is its own slice only when more than the sample was scored.
    slices = [
        (split, part)
        for split, report in first.items()
        for part in ("all", "test_sample")
        if part in report and (part == "all" or report[part]["n"] < report["all"]["n"])
    ]
    for split, part in slices:
        title = f"{split}, the fixed test sample" if part == "test_sample" else split
        columns = {"floor": first[split][part]["floor"]} | {name: report[split][part] for name, report in evaluations.items()}
        decode = {"floor": None} | {name: report[split]["decode"] for name, report in evaluations.items()}
        lines += [f"## {title} (mean ± half-width of the 95% bootstrap CI)", "", model_comparison_table(columns, decode), ""]
        for name, report in evaluations.items():
            diff = report[split][part]["vs_floor"]
            lines.append(
                f"- {name} - floor (n={report[split][part]['n']:,}): "
                + ", ".join(f"{m} {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" for m, d in diff.items())
            )
        lines.append("")
    if summary.get("vs_teacher"):
        lines += [f"Against the AR teacher ({summary['teacher_label']}), paired on the same test-sample users:", ""]
        lines += [
            f"- {name} - teacher (n={diff['n']:,}): "
            + ", ".join(f"{m} {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" for m, d in diff.items() if m != "n")
            for name, diff in summary["vs_teacher"].items()
        ]
        lines.append("")
    if summary.get("sweep"):
        lines += [f"## Threshold sweep of {summary['final']} (test)", "", sweep_table(summary), ""]
    if summary.get("speed"):
        lines += ["## Speed", "", speed_table(summary["speed"]), ""]
    if summary.get("registry"):
        lines += ["## Registry", ""]
        lines += [f"- [`{name}` version {v['version']}]({v['url']}) (`{v['model_uri']}`)" for name, v in summary["registry"].items()]
        lines.append("")
    for key in ("teacher_promotion", "promotion"):
        if summary.get(key):
            lines += [promotion_markdown(summary[key], summary[key]), ""]
    if summary.get("tracking"):
        tracking = summary["tracking"]
        lines += ["## MLflow", "", f"- recipe run: {tracking['parent_run_url']}", f"- UI: `{tracking['ui']}`"]
        promotion = summary.get("promotion") or {}
        champion = promotion.get("version") if promotion.get("promote") else promotion.get("champion_version")
        if champion:
            built = f", built as Bento `{summary['package']['bento_tag']}`" if summary.get("package") else ""
            lines.append(f"- champion: `models:/{promotion['name']}@champion` (version {champion}){built}; serve it with `make serve`")
        elif promotion:
            lines.append(
                f"- no champion: `{promotion['name']}` version {promotion['version']} stays challenger, "
                f"{promotion.get('reason', 'see the gate checks above')}; `make serve` has nothing to serve until a version passes"
            )
        lines.append("")
    lines += ["## Stages", "", "| stage | seconds | cached | facts |", "|---|---|---|---|"]
    for name, stage in summary["stages"].items():
        facts = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stage["facts"].items())
        lines.append(f"| {name} | {stage['seconds']} | {stage['cached']} | {facts} |")
    lines += ["", f"Total: {summary['seconds']} s"]
    return "\n".join(lines)
