"""A Bento installs everything its service imports: deploy/bentofile.yaml lists each third-party
distribution the service's modules import (or one that requires it), plus the drivers Feast needs
for the production profile's stores (Redis online store, Postgres registry)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re

import yaml
from packaging.requirements import Requirement

from tests.import_graph import ROOT, imports

BENTOFILE = ROOT / "deploy" / "bentofile.yaml"
# Imported by Feast, not by the project, when the store is Redis (online) or Postgres (registry).
STORE_DRIVERS = {"redis", "psycopg"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _service_modules() -> set[str]:
    graph, seen, stack = imports(), set(), ["deploy.service"]
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(graph.get(module, ()))
    return seen


def _third_party_distributions(modules: set[str]) -> set[str]:
    top_level: set[str] = set()
    for module in modules:
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        path = path if path.exists() else ROOT.joinpath(*module.split("."), "__init__.py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top_level.add(node.module.split(".")[0])
    distributions = metadata.packages_distributions()
    return {_name(dist) for name in top_level for dist in distributions.get(name, ())} - {"diffusion-gr2"}


def _installed_with(listed: set[str]) -> set[str]:
    """The listed distributions and everything they require (extras left out), transitively."""
    closure, stack = set(), list(listed)
    while stack:
        name = stack.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        stack.extend(_name(r) for r in requirements if "extra ==" not in r.replace("'", '"').replace('extra=="', 'extra == "'))
    return closure


def test_the_bento_installs_every_distribution_the_service_imports() -> None:
    listed = {_name(package) for package in yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]}
    needed = _third_party_distributions(_service_modules()) | STORE_DRIVERS
    assert "bentoml" in needed and "feast" in needed
    missing = sorted(needed - _installed_with(listed))
    assert not missing, f"deploy/bentofile.yaml installs none of {missing}"


def test_the_bento_pins_what_the_project_pins() -> None:
    pinned = {_name(d): d for d in metadata.requires("diffusion-gr2") or [] if "extra ==" not in d}
    for package in yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]:
        assert _name(package) in pinned, f"{package} is not a dependency of the project"
        # The same specifier and extras, so the Bento runs the versions the tests ran.
        ours, project = Requirement(package), Requirement(pinned[_name(package)])
        assert (ours.specifier, ours.extras) == (project.specifier, project.extras), (package, str(project))
