"""The import graph keeps the architecture's direction: every import points down the layers, no cycle
between packages, and a service process that loads only what serves.

Read from the source with ``ast`` (``tests/import_graph.py``, function-level imports included), so
the test needs nothing installed beyond the project itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from tests.import_graph import ROOT, imports



# The one rule: parts in layers, lowest first. A module imports its own part or a part of a lower
# layer; parts of the same layer (training and evaluation; the CLI and deploy) know nothing of
# each other. Each part is a package prefix or one module, as the README's layout names them.
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"Base": ("components.config", "components.storage", "components.stage", "components.reporting", "components.rank_metrics")},
    {"Data": ("components.data",)},
    {"SIDs": ("components.semantic_ids",)},
    {"Features": ("feature_repo",)},
    {"Prompts": ("components.prompts",)},
    {"Candidates": ("components.candidates",)},
    {"Traces": ("components.traces",)},
    {"Modeling": ("components.modeling",)},
    {"Decoding": ("components.decoding",)},
    {"Training": ("components.training",), "Evaluation": ("components.evaluation",)},
    {"Baselines": ("components.baselines",)},
    {"Recipe": ("components.recipe",)},
    {"Tracking": ("components.tracking",)},
    {"Serving": ("components.serving",)},
    {"Flows": ("flows",)},
    {"CLI": ("cli",), "Deploy": ("deploy",)},
)
PARTS = {part: prefixes for layer in LAYERS for part, prefixes in layer.items()}
LAYER_OF = {part: index for index, layer in enumerate(LAYERS) for part in layer}
# What a service process must never load: data preparation, training, evaluation, validation.
NOT_IN_THE_SERVICE = (
    "components.data",
    "components.candidates.build",
    "components.candidates.examples",
    "components.training",
    "components.evaluation",
    "components.traces",
    "great_expectations",
)


def _part(module: str) -> str | None:
    for part, prefixes in PARTS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return part
    return None


def _package(module: str) -> str:
    """``components.x`` for anything under it; the top-level directory otherwise."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "components" and len(parts) > 1 else parts[0]


def test_the_parts_cover_every_package() -> None:
    unassigned = sorted({_package(module) for module in imports() if _part(module) is None} - {"components"})
    assert not unassigned, f"packages in no part: {unassigned}"


def test_imports_point_down_the_layers() -> None:
    offending = sorted(
        f"{module} ({importer}) imports {target} ({imported})"
        for module, targets in imports().items()
        for target in targets
        if (importer := _part(module)) and (imported := _part(target)) and importer != imported
        and LAYER_OF[imported] >= LAYER_OF[importer]
    )
    assert not offending, "imports must point to a lower layer (LAYERS): " + "; ".join(offending)


def test_packages_form_no_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports().items():
        edges[_package(module)] |= {_package(target) for target in targets} - {_package(module), "components"}
    cycles = []
    state: dict[str, int] = {}

    def visit(package: str, path: list[str]) -> None:
        state[package] = 1
        for nxt in sorted(edges[package]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[package] = 2

    for package in sorted(list(edges)):
        if package not in state:
            visit(package, [package])
    assert not cycles, "package cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_service_loads_only_what_serves() -> None:
    code = "import sys, components.serving.bundle; print('\\n'.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "components.serving.engine" in loaded
    unexpected = sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_IN_THE_SERVICE))
    assert not unexpected, f"the service process loads {unexpected}"
