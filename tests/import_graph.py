"""The project's import graph, read from the source with ``ast`` (function-level imports included):
the architecture test holds it against the layers, the stage table test against each stage's code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("components", "flows", "deploy", "feature_repo", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (``from a import b`` counts ``a.b`` when
    that is a module, else ``a``)."""
    files = [path for directory in SOURCE_DIRS for path in (ROOT / directory).rglob("*.py")]
    modules = {module_name(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names}
        graph[name] = {target for target in targets if target in modules}
    return graph
