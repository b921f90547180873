"""The contributor package declares what federation/ imports, pinned like requirements.txt (fast check;
tests/federation/test_install.py is the real one: a fresh venv and every command)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]
# Imported only at run time by a library, so no `import` names them: transformers' GGUF loader needs gguf.
NEEDED_WITHOUT_IMPORT = {"gguf"}


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_name(d): d for d in deps}


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module name -> the federation/ files that import it (absolute imports)."""
    modules: dict[str, set[str]] = {}
    for path in (REPO / "federation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return modules


def _imported_distributions() -> set[str]:
    modules = set(_imported_modules()) - set(sys.stdlib_module_names) - {"federation", "bayanihan_app"}
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


# Checkout-only tooling (testbed/): what a contributor's `pip install .` must not contain.
TOOLING = ("testbed", "tiny", "attack", "hostile")


def _packaged(names: list[str]) -> list[str]:
    return [n for n in names if any(t in part for part in re.split(r"[./]", n) for t in TOOLING)]


def test_the_contributor_package_leaves_the_test_and_demo_tooling_out():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(REPO), include=include)
    assert "federation" in packages and "testbed" not in packages and not _packaged(packages), packages
    modules = [str(p.relative_to(REPO)) for pkg in packages for p in (REPO / pkg.replace(".", "/")).glob("*.py")]
    assert not _packaged(modules), modules


def test_no_federation_module_imports_the_tooling():
    """The installed package cannot import what is not installed: a `testbed` import would break contributors."""
    assert "testbed" not in _imported_modules(), _imported_modules()["testbed"]
    mentions = [str(p.relative_to(REPO)) for p in (REPO / "federation").rglob("*.py") if "testbed" in p.read_text()]
    assert not mentions, f"federation/ must not run testbed code (e.g. `-m testbed...`): {mentions}"


def test_the_built_wheel_holds_federation_only(tmp_path):
    """A real wheel, built from a copy of the checkout's package sources with testbed/ beside them."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("federation", "testbed"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "w").glob("bayanihan_federation-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    assert "federation/node_runtime.py" in files and "federation/corpus.py" in files  # demo-corpus is a command
    assert not _packaged(files), _packaged(files)
