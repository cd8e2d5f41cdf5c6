"""A model card per registered version: what the model is, where it came from, how it did at the
gates and on the test users, its champion history, and what it is (not) for.

Everything comes from the registry (the version's lineage and promotion tags, its run's
parameters) and, when the version is one of its models, the latest recipe summary (Table 1 and 2
rows with their CIs). ``dgr2 card`` prints it; the recipe logs it as Markdown and HTML to the
version's run when the gates have decided.
"""

from __future__ import annotations

import json
from typing import Any

from components.config import Config
from components.reporting import html_page
from components.tracking.champions import RegistryError, champion_history
from components.tracking.runs import client

CARD_FILES = ("model_card.md", "model_card.html")


def resolve_version(cfg: Config, reference: str) -> Any:
    """``name@alias`` or ``name@version`` -> the MLflow model version.

    Raises:
        RegistryError: a malformed reference, or no such alias or version.
    """
    from mlflow.exceptions import MlflowException

    name, sep, which = reference.partition("@")
    if not sep or not name or not which:
        raise RegistryError(f"{reference!r}: give NAME@ALIAS or NAME@VERSION, e.g. diffusion-gr2@champion")
    try:
        if which.isdigit():
            return client(cfg).get_model_version(name, which)
        return client(cfg).get_model_version_by_alias(name, which)
    except MlflowException:
        raise RegistryError(f"{reference}: the registry has no such version or alias") from None


def shadow_sentence(shadow: dict[str, float]) -> str:
    """One line on a challenger's shadow traffic (``components.serving.shadow.shadow_summary``)."""
    return (
        f"{shadow['decoded']:.0f} requests decoded ({shadow['dropped']:.0f} dropped to keep live latency, "
        f"{shadow['error']:.0f} errors); top-1 agreement with the champion {shadow['top1_agreement']:.2%}, "
        f"mean rank correlation {shadow['mean_rank_correlation']:.3f}, valid {shadow['valid_rate']:.2%}, "
        f"{shadow['mean_decode_ms']:.0f} ms per decode."
    )


def _stat(stat: dict[str, float]) -> str:
    return f"{stat['mean']:+.4f} [{stat['ci_low']:+.4f}, {stat['ci_high']:+.4f}]"


def _test_slice(report: dict[str, Any]) -> dict[str, Any]:
    """The papers' fixed test sample when it is its own slice, else every scored test user."""
    test = report["test"]
    return test["test_sample"] if "test_sample" in test else test["all"]


def _recipe_rows(summary: dict[str, Any], model_uri: str) -> list[str]:
    """Table 1 (and, for the final model, Table 2) rows of ``model_uri`` in a recipe summary."""
    labels = [label for label, uri in summary.get("models", {}).items() if uri == model_uri]
    if not labels:
        return []
    label = labels[0]
    lines = ["| model | users | R@1 | R@1 - floor, 95% CI | NDCG@3 | valid | copies the pre-rank order |", "|---|---|---|---|---|---|---|"]
    # The final model's row at the serving tau is labelled "<label> (tau=...)".
    rows = {
        name: report for name, report in summary.get("evaluations", {}).items() if name in (label, "SASRec") or name.startswith(f"{label} (tau=")
    }
    for name, report in rows.items():
        test = _test_slice(report)
        lines.append(
            f"| {name} | {test['n']:,} | {test['recall_at_1']['mean']:.4f} | {_stat(test['vs_floor']['recall_at_1'])} | "
            f"{test['ndcg_at_3']['mean']:.4f} | {test['valid_rate']:.2%} | {test.get('copied_pre_rank_rate', 0.0):.2%} |"
        )
    floor = _test_slice(next(iter(rows.values())))["floor"]
    lines.append(f"| pre-rank floor | | {floor['recall_at_1']['mean']:.4f} | | {floor['ndcg_at_3']['mean']:.4f} | | |")
    if label == summary.get("final") and summary.get("sweep"):
        lines += ["", "| tau | users | R@1 | valid | tokens per forward |", "|---|---|---|---|---|"]
        for tau, report in summary["sweep"].items():
            test = report["test"]["all"]
            lines.append(f"| {tau} | {test['n']:,} | {test['recall_at_1']['mean']:.4f} | {test['valid_rate']:.2%} | {report['test']['decode']['tokens_per_forward']:.2f} |")
    return [f"## On the test users (recipe label `{label}`, dataset version {summary.get('dataset_version', '?')})", "", *lines, ""]


def model_card(cfg: Config, reference: str, summary: dict[str, Any] | None = None) -> str:
    """The card of ``reference`` (``name@alias|version``) as Markdown.

    Args:
        cfg: names the tracking server.
        reference: e.g. ``diffusion-gr2@champion`` or ``gr2-ar@3``.
        summary: a recipe summary to take the test rows from (``dgr2 report --json``); its rows
            appear when the version's checkpoint is one of its models.
    """
    return _card(cfg, resolve_version(cfg, reference), summary)


def _card(cfg: Config, version: Any, summary: dict[str, Any] | None) -> str:
    tags, name = version.tags, version.name
    params = _run_params(cfg, version.run_id)
    aliases = ", ".join(version.aliases) or "none"
    block = params.get("diffusion.block_size") if tags.get("stage") in ("convert", "cft", "opd", "diffusion_rl") else None
    lines = [
        f"# Model card: {name} version {version.version}",
        "",
        f"Aliases: {aliases}. Registered {version.creation_timestamp and _when(version.creation_timestamp)}.",
        "",
        "## What it is",
        "",
        f"- A {'block-diffusion re-ranker (Diffusion-GR2)' if block else 'autoregressive re-ranker (GR2)'} from stage "
        f"`{tags.get('stage', '?')}`" + (f", block size {block}" if block else "") + ".",
        f"- Started from: {tags.get('parent_model_version', '?')}; checkpoint `{tags.get('model_uri', '?')}`.",
        f"- Data: dataset version {tags.get('dataset_version', '?')} of catalogue `{tags.get('catalog', '?')}`; "
        f"config hash {tags.get('config_hash', '?')}; code at commit {tags.get('git_commit', '?')}.",
        f"- Base model: {params.get('model.preset') or params.get('model.base_model') or 'see the run parameters'}.",
        "",
    ]
    decision = tags.get("promotion.decision")
    if decision:
        metrics = json.loads(tags.get("promotion.metrics", "{}")).get("challenger") or {}
        lines += [f"## Promotion gates: {decision} (compared with version {tags.get('promotion.compared_with', 'none')})", ""]
        if metrics:
            vs_floor = metrics.get("vs_floor", {})
            lines += [
                f"On {metrics.get('examples', '?')} valid-split users: valid {metrics.get('valid_rate', 0):.2%}, "
                f"R@1 {metrics.get('recall_at_1', 0):.4f} (minus floor {_stat(vs_floor['recall_at_1']) if 'recall_at_1' in vs_floor else '?'}), "
                f"NDCG@3 {metrics.get('ndcg_at_3', 0):.4f}, {metrics.get('decode_tokens_per_s', 0):,.0f} decode tokens/s; "
                f"{metrics.get('copied_pre_rank_rate', 0):.2%} of the answers copy the pre-rank order.",
                "",
            ]
        lines += [f"- {check}" for check in json.loads(tags.get("promotion.checks", "[]"))] + [""]
    else:
        lines += ["## Promotion gates", "", "Not decided yet.", ""]
    if "shadow_evidence" in tags:
        evidence = shadow_sentence(json.loads(tags["shadow_evidence"]))
        lines += ["## Shadow traffic (live requests, decoded beside the champion)", "", f"- {evidence}", ""]
    lines += _recipe_rows(summary or {}, tags.get("model_uri", ""))
    events = [e for e in champion_history(cfg, name) if e["version"] == str(version.version)]
    if events:
        lines += ["## Champion history", "", *(f"- {e['at']}: {e['kind']} by {e['by']}: {e['reason']}" for e in events), ""]
    lines += [
        "## Intended use and known limits",
        "",
        f"- Re-ranks the 10 pre-ranked candidates of a user of catalogue `{tags.get('catalog', '?')}` from their "
        "purchase history. It is not for another catalogue: its item IDs are this one's.",
        "- An answer that is not a permutation of the candidates falls back to the pre-rank order. The valid "
        "rate above is how often that does not happen.",
        "- A valid answer can still copy the pre-rank order (the share is given above), so the re-ranker's value is "
        "its margin over the floor, not its validity.",
        "- The numbers were measured on a seeded sample of users from one dataset version. Drift in the catalogue or "
        "in user behaviour since then is not covered.",
    ]
    return "\n".join(lines) + "\n"


def _run_params(cfg: Config, run_id: str | None) -> dict[str, str]:
    """The stage run's parameters over its recipe run's (which holds every config section)."""
    if not run_id:
        return {}
    run = client(cfg).get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    return (client(cfg).get_run(parent).data.params if parent else {}) | run.data.params


def _when(timestamp_ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).isoformat(timespec="seconds")


def card_html(markdown: str) -> str:
    """The card as a standalone HTML page (tables included)."""
    return html_page(markdown, "Model card")


def log_card(cfg: Config, reference: str, summary: dict[str, Any] | None = None) -> str:
    """Write the card to the version's run as Markdown and HTML; returns the Markdown."""
    version = resolve_version(cfg, reference)
    markdown = _card(cfg, version, summary)
    mlflow_client = client(cfg)
    for text, path in zip((markdown, card_html(markdown)), CARD_FILES):
        mlflow_client.log_text(version.run_id, text, path)
    return markdown
