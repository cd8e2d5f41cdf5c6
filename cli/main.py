"""``dgr2``: the command line over the recipe's stages.

Every command takes ``--config configs/<profile>.yaml`` and repeated ``--set section.key=value``
overrides, shows progress on stderr, and with ``--json`` prints exactly one JSON object on stdout
(metrics and output URIs); without it, a readable summary.

    dgr2 data --config configs/tiny.yaml
    dgr2 data --set candidates.negatives=popularity --json
    dgr2 train-teacher --config configs/tiny.yaml
    dgr2 convert --config configs/tiny.yaml
    dgr2 train-cft --config configs/tiny.yaml --json
    dgr2 train-rl --config configs/tiny.yaml      # the whole recipe (make run)
    dgr2 report --json
    dgr2 card diffusion-gr2@champion             # a version's model card
    dgr2 history diffusion-gr2                   # past champions
    dgr2 rollback diffusion-gr2 --reason "..."   # the champion before the current one
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Diffusion-GR2 platform: train, convert, serve a reasoning re-ranker.")



@app.callback()
def main() -> None:
    """Diffusion-GR2 platform: train, convert, serve a reasoning re-ranker."""


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Profile YAML, e.g. configs/tiny.yaml. Default: embedded defaults.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a readable summary.")]

# Errors that mean bad input or a failed check, not a bug: reported in one line, exit code 2.
# Matched by class name so that start-up need not import the modules (GX) that define them.
_USER_ERRORS = (
    "ConfigError", "DataError", "DataValidationError", "StorageError", "HistoryMismatchError", "RegistryError", "CheckpointError"
)


def _user_error(exc: Exception, cfg: Any) -> str | None:
    """The one-line message for an error that is not a bug; None for a bug (its traceback shows)."""
    if type(exc).__name__ in _USER_ERRORS:
        return str(exc)
    from components.tracking.runs import tracking_unavailable, tracking_uri

    if tracking_unavailable(exc):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"the MLflow tracking store {tracking_uri(cfg)} did not answer: {reason}. Every stage that "
            "finished is cached: run the same command again once it answers, and it resumes from there."
        )
    return None


def _project_environment(work_dir: str) -> None:
    """Embedded defaults for the libraries, set before they are imported (they read env at import)."""
    home = Path(work_dir).resolve().parent
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        # Where the recipe builds a new champion's Bento and `make serve` finds it.
        "BENTOML_HOME": str(home / "bentoml"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect creates only the last level of its home; a fresh clone has no .dgr2 yet.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def _run_command(config: Path | None, overrides: list[str] | None, as_json: bool, body: Callable[[Any], dict[str, Any]], render: Callable[[dict[str, Any]], str]) -> None:
    from components.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _project_environment(cfg.storage.work_dir)
    try:
        # Libraries print to stdout; with --json, stdout carries only the result object.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = body(cfg)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        message = _user_error(exc, cfg)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(render(result)))


@app.command()
def data(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Ingest, validate, build semantic IDs, features and re-ranking examples (the ``data`` flow)."""
    from components.reporting import data_summary_markdown

    def body(cfg: Any) -> dict[str, Any]:
        from flows.data import data_flow

        return data_flow(cfg.model_dump(mode="json"))

    _run_command(config, overrides, as_json, body, data_summary_markdown)


@app.command("train-teacher")
def train_teacher(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Train the AR teacher (traces, mid-training, SFT, RL) on the data flow's output and evaluate it."""
    from components.reporting import teacher_summary_markdown

    def body(cfg: Any) -> dict[str, Any]:
        from flows.teacher import teacher_flow

        return teacher_flow(cfg.model_dump(mode="json"))

    _run_command(config, overrides, as_json, body, teacher_summary_markdown)


def _recipe_command(config: Path | None, overrides: list[str] | None, as_json: bool, until: str) -> None:
    from components.reporting import recipe_summary_markdown

    def body(cfg: Any) -> dict[str, Any]:
        from flows.recipe import recipe_flow

        return recipe_flow(cfg.model_dump(mode="json"), until=until)

    _run_command(config, overrides, as_json, body, recipe_summary_markdown)


@app.command()
def convert(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Convert the AR teacher to block diffusion (training it first if needed) and evaluate the naive model."""
    _recipe_command(config, overrides, as_json, "convert")


@app.command("train-cft")
def train_cft(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Recipe through conversion fine-tuning, then the tau sweep and the speed comparison."""
    _recipe_command(config, overrides, as_json, "cft")


@app.command("train-opd")
def train_opd(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Recipe through on-policy distillation from the AR teacher, then the tau sweep and speed."""
    _recipe_command(config, overrides, as_json, "opd")


@app.command("train-rl")
def train_rl(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """The whole recipe: teacher, conversion, CFT, OPD, RL; both result tables and the speed comparison."""
    _recipe_command(config, overrides, as_json, "rl")


@app.command()
def report(config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """The latest recipe run's tables, model URIs and dataset version (nothing is trained)."""
    from components.reporting import recipe_summary_markdown

    def body(cfg: Any) -> dict[str, Any]:
        from components import storage
        from components.storage import StorageError
        from flows.recipe import latest_report_uri

        uri = latest_report_uri(cfg)
        if not storage.exists(uri):
            raise StorageError(f"no recipe run has finished under {cfg.storage.artifact_root}; run `make run` (dgr2 train-rl) first")
        return storage.read_json(uri)

    _run_command(config, overrides, as_json, body, recipe_summary_markdown)


NameArgument = Annotated[str, typer.Argument(help="A registered model: diffusion-gr2 (the student) or gr2-ar (the teacher).")]


def _history_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Champions of {result['name']} (now: version {result['champion'] or 'none'})", "", "| when | version | how | by | why |", "|---|---|---|---|---|"]
    lines += [f"| {e['at']} | {e['version']} | {e['kind']} | {e['by']} | {e['reason']} |" for e in result["events"]]
    return "\n".join(lines)


@app.command()
def history(name: NameArgument, config: ConfigOption = None, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Past champions of a registered model, oldest first: when, how (promote or rollback), by whom, why."""

    def body(cfg: Any) -> dict[str, Any]:
        from components.tracking.champions import champion_history
        from components.tracking.registry import CHAMPION, version_by_alias

        champion = version_by_alias(cfg, name, CHAMPION)
        return {"name": name, "champion": str(champion.version) if champion else None, "events": champion_history(cfg, name)}

    _run_command(config, overrides, as_json, body, _history_markdown)


@app.command()
def rollback(
    name: NameArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with the move (required).")],
    to: Annotated[str | None, typer.Option("--to", help="The version to serve (default: the champion before the current one).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the champion alias back; `make serve` then packages and serves that version."""

    def body(cfg: Any) -> dict[str, Any]:
        from components.tracking.champions import rollback as roll_back

        return roll_back(cfg, name, reason, to)

    def render(event: dict[str, Any]) -> str:
        return f"{name}: champion moved from version {event['from']} to {event['version']} ({event['at']}, {event['by']}: {event['reason']}). Run `make serve` to serve it."

    _run_command(config, overrides, as_json, body, render)


@app.command()
def card(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME@VERSION, e.g. diffusion-gr2@champion.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the card here (.md, or .html for a web page) instead of printing it.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """A registered version's model card: what it is, its lineage, gate results, test rows, limits."""

    def body(cfg: Any) -> dict[str, Any]:
        from components import storage
        from components.tracking.card import card_html, model_card
        from flows.recipe import latest_report_uri

        uri = latest_report_uri(cfg)
        markdown = model_card(cfg, reference, storage.read_json(uri) if storage.exists(uri) else None)
        if out is not None:
            out.write_text(card_html(markdown) if out.suffix.lower() in (".html", ".htm") else markdown)
        return {"reference": reference, "markdown": markdown, "written": str(out) if out else None}

    _run_command(config, overrides, as_json, body, lambda result: f"Written to {result['written']}" if result["written"] else result["markdown"])


if __name__ == "__main__":
    app()
