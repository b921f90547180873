"""The Django apps in platform/ (and federation/ under them) import each other one way only.

Allowed direction, bottom to top — a unit may import only units listed before it:

    federation ← bayanihan_site ← community ← campaigns ← releases ← console ← stack

- federation: what a contributor installs; never Django, never an app.
- bayanihan_site: infrastructure under every app (settings, Celery, the SuperLink client, request and login
  limits). Its root URLconf names the apps' routes by string (`include("community.urls")`), never by import.
- community → campaigns → releases: contributors and nodes; campaigns train on nodes; releases publish campaigns.
- console: pages that read every app (the staff console and a contributor's own page, `/me/`).
- stack: the commands that run the whole platform (demo, serve) and seed it.

Imports inside functions count too: a lazy import is still a dependency, and the way a cycle hides. Lower
units that must react to higher ones do it through Django signals declared below (e.g. `campaigns.signals`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["federation", "bayanihan_site", "community", "campaigns", "releases", "console", "stack"]


def _units(root: Path) -> dict[str, Path]:
    """Unit name -> folder: federation/ and every app (or the project package) in platform/."""
    units = {"federation": root / "federation"} if (root / "federation").is_dir() else {}
    for folder in sorted((root / "platform").iterdir()):
        if folder.is_dir() and any(folder.glob("*.py")):
            units[folder.name] = folder
    return units


def _imported_tops(tree: ast.AST) -> Iterable[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a module, at any depth (functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def dependency_edges(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> where ("platform/campaigns/models.py:12", ...), for every cross-unit import."""
    units = _units(root)
    edges: dict[tuple[str, str], list[str]] = {}
    for unit, folder in units.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(root)
            for top, line in _imported_tops(ast.parse(path.read_text(), str(path))):
                if top in units and top != unit:
                    edges.setdefault((unit, top), []).append(f"{relative}:{line}")
    return edges


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None when it is acyclic (depth-first, three colours)."""
    graph: dict[str, list[str]] = {}
    for source, target in edges:
        graph.setdefault(source, []).append(target)
        graph.setdefault(target, [])
    state: dict[str, str] = {}  # missing: unvisited; "open": on the current path; "done": no cycle through it
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_apps_import_each_other_without_a_cycle():
    edges = dependency_edges(ROOT)
    cycle = find_cycle(edges)
    if cycle:
        where = [f"{a} → {b}: {', '.join(edges[a, b])}" for a, b in zip(cycle, cycle[1:], strict=False)]
        pytest.fail("import cycle between apps: " + " → ".join(cycle) + "\n" + "\n".join(where))


def test_every_import_points_down_the_declared_order():
    rank = {unit: i for i, unit in enumerate(ORDER)}
    upward = [
        f"{importer} imports {imported} ({', '.join(where)})"
        for (importer, imported), where in sorted(dependency_edges(ROOT).items())
        if rank[imported] > rank[importer]
    ]
    assert not upward, "imports against the app order " + " ← ".join(ORDER) + ":\n" + "\n".join(upward)


def test_every_app_has_a_place_in_the_order():
    """A new app must be placed in ORDER (and the docstring) before it can import or be imported."""
    assert set(_units(ROOT)) == set(ORDER)


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The checker itself: two apps that import each other, one of them lazily, make a reported cycle."""
    for app, source in {
        "alpha": "from beta.models import Thing\n",
        "beta": "def later():\n    import alpha.services\n    return alpha.services\n",
        "gamma": "from alpha import models\n",
    }.items():
        (tmp_path / "platform" / app).mkdir(parents=True)
        (tmp_path / "platform" / app / "models.py").write_text(source)
    edges = dependency_edges(tmp_path)
    assert set(edges) == {("alpha", "beta"), ("beta", "alpha"), ("gamma", "alpha")}
    assert edges["beta", "alpha"] == ["platform/beta/models.py:2"]
    assert find_cycle(edges) in (["alpha", "beta", "alpha"], ["beta", "alpha", "beta"])
    assert find_cycle([("gamma", "alpha"), ("alpha", "beta")]) is None
