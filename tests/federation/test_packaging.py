"""The contributor package declares what federation/ imports, pinned like requirements.txt (fast check;
tests/federation/test_install.py is the real one: a fresh venv and every command)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Imported only at run time by a library, so no `import` names them: transformers' GGUF loader needs gguf.
NEEDED_WITHOUT_IMPORT = {"gguf"}


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_name(d): d for d in deps}


def _imported_distributions() -> set[str]:
    modules: set[str] = set()
    for path in (REPO / "federation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"federation", "bayanihan_app"}
    by_module = packages_distributions()
    return {dist.lower().replace("_", "-") for m in modules for dist in by_module.get(m, [m])}


def test_every_third_party_import_is_a_declared_dependency():
    missing = (_imported_distributions() | NEEDED_WITHOUT_IMPORT) - set(_declared())
    assert not missing, f"federation/ needs {sorted(missing)} but pyproject.toml does not declare them"


def test_federation_never_imports_django_or_test_tooling():
    assert not _imported_distributions() & {"django", "pytest", "pytest-django", "celery"}


def test_each_dependency_is_pinned_to_the_platforms_version():
    platform = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            platform[_name(requirement)] = requirement.split("==")[1].strip()
    for name, requirement in _declared().items():
        assert "==" in requirement, f"{requirement}: pin it (==) so contributors get what CI tested"
        assert platform.get(name) == requirement.split("==")[1].split(";")[0].strip(), (
            f"{requirement} differs from requirements.txt ({platform.get(name)})"
        )
