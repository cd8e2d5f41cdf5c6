"""The order the recipe runs its stages in: the AR teacher (GR2), then the block-diffusion student
(Diffusion-GR2 section 6), each model evaluated, and one summary of both.

:func:`run_teacher` and :func:`run_diffusion` decide which stage runs after which and on what; a
:data:`StageRunner` runs one stage of :data:`components.recipe.stages.STAGES` by name, in this
process (:func:`direct_runner`) or as a cached Prefect task (``flows``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from components.baselines.stage import evaluation_report
from components.config import Config, EvaluationConfig
from components.evaluation.runner import paired_comparison
from components.recipe.stages import STAGES

# (label, stage name, *inputs) -> the stage's ``StageResult.to_dict()`` plus ``seconds``.
StageRunner = Callable[..., dict[str, Any]]
# How far ``run_diffusion`` goes.
UNTIL = ("convert", "cft", "opd", "rl")


def direct_runner(cfg: Config) -> StageRunner:
    """Run each stage in this process, timed (the orchestrator's runner adds caching and retries)."""

    def run(_label: str, stage: str, *inputs: str) -> dict[str, Any]:
        started = time.perf_counter()
        result = STAGES[stage].function(cfg, *inputs).to_dict()
        return result | {"seconds": round(time.perf_counter() - started, 2)}

    return run


def run_teacher(
    cfg: Config, dataset_uri: str, sid_uri: str, examples_uri: str, run: StageRunner, start_model_uri: str = ""
) -> dict[str, Any]:
    """The AR teacher's stage sequence: traces -> base model -> mid-training -> SFT -> RL, then evaluation.

    The SFT and RL models are both evaluated, so the summary shows what RL adds; SFT on the
    ``quick`` scope when RL follows it.

    Args:
        cfg: run config (``midtrain.enabled``, ``rl.enabled`` and ``sasrec.enabled`` skip those stages).
        dataset_uri, sid_uri, examples_uri: the data flow's outputs.
        run: runs one stage (:func:`direct_runner`, or the Prefect flow's cached tasks).
        start_model_uri: warm start: mid-training (or SFT) starts from this model (the champion's
            teacher, on retraining) instead of a freshly built base model.

    Returns:
        ``models`` (label -> model URI), ``evaluations`` (label -> evaluation report; the SASRec
        baseline's too, though it is no model of the recipe and is never registered),
        ``traces_uri`` and :func:`summarize_stages`' ``stages`` and ``stage_metrics``.
    """
    stages: dict[str, dict[str, Any]] = {}
    if cfg.sasrec.enabled:
        # The baseline needs only the data; its row heads the table, before the models it is a baseline for.
        stages["sasrec"] = run("sasrec", "sasrec", dataset_uri, examples_uri)
    stages["traces"] = run("traces", "traces", dataset_uri, sid_uri, examples_uri)
    traces_uri = stages["traces"]["outputs"]["traces_uri"]
    model_uri = start_model_uri
    if not model_uri:
        stages["base_model"] = run("base_model", "base_model", dataset_uri, sid_uri, examples_uri, traces_uri)
        model_uri = stages["base_model"]["outputs"]["model_uri"]
    if cfg.midtrain.enabled:
        stages["midtrain"] = run("midtrain", "midtrain", model_uri, dataset_uri, sid_uri, examples_uri)
        model_uri = stages["midtrain"]["outputs"]["model_uri"]
    stages["sft"] = run("sft", "sft", model_uri, dataset_uri, sid_uri, traces_uri)
    models = {"SFT": stages["sft"]["outputs"]["model_uri"]}
    if cfg.rl.enabled:
        stages["rl"] = run("rl", "rl", models["SFT"], dataset_uri, sid_uri, examples_uri)
        models["SFT+RL"] = stages["rl"]["outputs"]["model_uri"]
    evaluations = {"SASRec": evaluation_report(stages["sasrec"]["metrics"])} if "sasrec" in stages else {}
    teacher_label = list(models)[-1]
    for name, uri in models.items():
        # The model the student starts from is scored on every test user; SFT before RL may be quick.
        scope = "" if name == teacher_label else "quick"
        stages[f"evaluate {name}"] = run(f"evaluate {name}", "evaluate", uri, dataset_uri, sid_uri, examples_uri, "", scope)
        evaluations[name] = stages[f"evaluate {name}"]["metrics"]
    return {"models": models, "evaluations": evaluations, "traces_uri": traces_uri} | summarize_stages(stages)


def at_tau(label: str, tau: float | str) -> str:
    """A block-diffusion model's name at one decoding tau, as evaluations, stages and cards show it."""
    return f"{label} (tau={tau})"


def run_diffusion(
    cfg: Config,
    teacher_uri: str,
    dataset_uri: str,
    sid_uri: str,
    examples_uri: str,
    traces_uri: str,
    run: StageRunner,
    until: str = "rl",
    student_start_uri: str = "",
) -> dict[str, Any]:
    """Convert the teacher, then CFT, OPD and RL as far as ``until``; evaluate every model at
    tau = 1 (the papers' table 1), the last one at every ``evaluation.thresholds`` value and the
    serving tau (table 2), and compare its decode speed with the teacher's.

    The final model is scored on every test user at the serving tau, the decoder its service runs
    and its gate checks; that evaluation is also table 1's row ``"<final> (tau=<serving>)"``. Its
    other taus, tau = 1 included, and the models before it may be scored on the quick scope.

    ``opd.enabled`` / ``diffusion_rl.enabled`` skip those stages. ``student_start_uri`` warm-starts
    CFT from an earlier block-diffusion model (the champion, on retraining) instead of the naive
    conversion, which is still evaluated as the table's reference row.

    Returns:
        ``models`` (label -> URI), ``evaluations`` (label -> tau = 1 report, and the final model's
        serving-tau report), ``sweep`` (tau -> report of the final model), ``final`` (its label),
        ``speed`` (empty after conversion only), and :func:`summarize_stages`' entries.
    """
    if until not in UNTIL:
        raise ValueError(f"until must be one of {UNTIL}, got {until!r}")
    data = (dataset_uri, sid_uri, examples_uri)
    stages: dict[str, dict[str, Any]] = {}
    models: dict[str, str] = {}
    evaluations: dict[str, Any] = {}

    def evaluate(label: str, tau: float, scope: str = "") -> dict[str, Any]:
        name = f"evaluate {at_tau(label, tau)}"
        stages[name] = run(name, "evaluate", models[label], *data, str(tau), scope)
        return stages[name]["metrics"]

    # The stages this run goes through: the last one's model is the final one, scored on every
    # test user at the serving tau; the ones before it may be scored on the quick scope. The naive
    # conversion is the table's reference row, always on the quick scope, so `dgr2 convert` and a
    # later `dgr2 train-rl` share its evaluation.
    planned = ["convert"]
    if until != "convert":
        planned.append("cft")
    if until in ("opd", "rl") and cfg.opd.enabled:
        planned.append("opd")
    if until == "rl" and cfg.diffusion_rl.enabled:
        planned.append("diffusion_rl")

    serving = cfg.evaluation.serving_threshold

    def add(label: str, stage: str, *inputs: str) -> None:
        stages[stage] = run(stage, stage, *inputs)
        models[label] = stages[stage]["outputs"]["model_uri"]
        served_at_tau_1 = stage == planned[-1] != "convert" and serving == 1.0
        evaluations[label] = evaluate(label, 1.0, "" if served_at_tau_1 else "quick")

    add("naive conversion", "convert", teacher_uri)
    if "cft" in planned:
        add("CFT", "cft", student_start_uri or models["naive conversion"], dataset_uri, sid_uri, traces_uri)
    if "opd" in planned:
        add("CFT+OPD", "opd", models["CFT"], teacher_uri, *data)
    if "diffusion_rl" in planned:
        add(f"{list(models)[-1]}+RL", "diffusion_rl", models[list(models)[-1]], *data)
    final = list(models)[-1]
    sweep: dict[str, Any] = {}
    speed: dict[str, Any] = {}
    if final != "naive conversion":
        # The serving tau on every test user; the other points of the accuracy-speed frontier on
        # the quick scope (tau = 1 is the evaluation above).
        sweep = {
            str(tau): evaluations[final] if tau == 1.0 else evaluate(final, tau, "" if tau == serving else "quick")
            for tau in cfg.evaluation.decoding_taus
        }
        if serving != 1.0:
            evaluations[at_tau(final, serving)] = sweep[str(serving)]
        stages["speed"] = run("speed", "speed", models[final], teacher_uri, *data)
        speed = stages["speed"]["metrics"]
    return {"models": models, "evaluations": evaluations, "sweep": sweep, "final": final, "speed": speed} | summarize_stages(stages)


def recipe_summary(teacher: dict[str, Any], diffusion: dict[str, Any], teacher_uri: str, cfg: EvaluationConfig) -> dict[str, Any]:
    """One summary of :func:`run_teacher` and :func:`run_diffusion`:
    every model's tau = 1 evaluation and the final model's at the serving tau side by side, the
    final model's sweep and speed, all stages,
    and ``vs_teacher``: each block-diffusion evaluation (the sweep's too) against the AR teacher's,
    paired on the test-sample users both scored (the papers' claim is that the student keeps its
    teacher's accuracy)."""
    teacher_label = next(label for label, uri in teacher["models"].items() if uri == teacher_uri)
    students = diffusion["evaluations"] | {
        at_tau(diffusion["final"], tau): report for tau, report in diffusion["sweep"].items() if float(tau) != 1.0
    }
    compared = {label: paired_comparison(report, teacher["evaluations"][teacher_label], cfg) for label, report in students.items()}
    return {
        "teacher_model_uri": teacher_uri,
        "teacher_label": teacher_label,
        "vs_teacher": {label: comparison for label, comparison in compared.items() if comparison is not None},
        "models": teacher["models"] | diffusion["models"],
        "evaluations": teacher["evaluations"] | diffusion["evaluations"],
        "final": diffusion["final"],
        "sweep": diffusion["sweep"],
        "speed": diffusion["speed"],
        "stages": teacher["stages"] | diffusion["stages"],
        "stage_metrics": teacher["stage_metrics"] | diffusion["stage_metrics"],
    }


def teacher_model(teacher: dict[str, Any]) -> str:
    """The AR model the diffusion stages start from and distil: SFT+RL, or SFT when RL is off."""
    return teacher["models"].get("SFT+RL", teacher["models"]["SFT"])


def summarize_stages(stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``stages``: seconds, cached and headline facts per stage; ``stage_metrics``: all metrics of
    every stage but the evaluations (whose reports are the summary's ``evaluations``)."""
    return {
        "stages": {
            name: {
                "seconds": stage["seconds"],
                "cached": bool(stage.get("cached")),
                "facts": {k: stage["metrics"][k] for k in (STAGES[name].facts if name in STAGES else ()) if k in stage["metrics"]},
            }
            for name, stage in stages.items()
        },
        "stage_metrics": {name: stage["metrics"] for name, stage in stages.items() if not name.startswith("evaluate")},
    }
