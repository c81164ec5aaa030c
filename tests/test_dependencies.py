"""Declared dependencies match the product's imports: every third-party module imported anywhere in
svformer/, export/, deploy/ and simulators/ (top level or inside functions) belongs to a distribution
declared in pyproject.toml's ``dependencies`` or in one of its optional extras for users (``ray``), and
none belongs to a dev-only extra. A user extra's modules are imported only inside functions, so the
product imports and runs without them."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("svformer", "export", "deploy", "simulators")
# standalone scripts shipped with the product but run elsewhere, and what they may import beyond the dependencies
STANDALONE = {"export/writers/lava_run.py": {"lava"}}  # runs in the separate Lava venv (make lava-venv)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DECLARED = _names(PROJECT["dependencies"])
EXTRAS = {name: _names(reqs) - DECLARED for name, reqs in PROJECT["optional-dependencies"].items() if name != "dev"}
OPTIONAL = set().union(*EXTRAS.values())  # distributions of the users' extras
DEV_ONLY = _names(PROJECT["optional-dependencies"]["dev"]) - DECLARED - OPTIONAL


def _module_level(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` outside function bodies (what runs when the module is imported)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo += [c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef)]
    return out


def third_party_imports(module_level: bool = False) -> dict[str, set[str]]:
    """Top-level module -> the product files importing it (absolute imports that are neither stdlib nor ours);
    with ``module_level`` only the imports that run when the file is imported (not inside functions)."""
    found: dict[str, set[str]] = {}
    for folder in PRODUCT:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in _module_level(tree) if module_level else ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for m in modules:
                    top = m.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "svformer_deploy":
                        found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def _distributions(module: str) -> set[str]:
    return {_norm(d) for d in packages_distributions().get(module, [])}


def test_the_scan_sees_the_products_third_party_imports() -> None:
    found = third_party_imports()
    assert {"torch", "numpy", "av", "PIL", "click", "spikingjelly"} <= set(found)
    assert "svformer/data/synthetic.py" in found["PIL"]  # imported inside the module body
    assert "deploy/commands/probe.py" in found["PIL"]  # imported inside a function


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    missing = {}
    for module, files in third_party_imports().items():
        files = {f for f in files if module not in STANDALONE.get(f, set())}
        if files and not _distributions(module) & (DECLARED | OPTIONAL):
            missing[module] = (sorted(_distributions(module)) or ["not installed"], sorted(files))
    assert not missing, f"imported but not declared in pyproject.toml dependencies or extras: {missing}"


def test_the_users_extras_are_optional_dependencies_imported_only_inside_functions() -> None:
    assert EXTRAS["ray"] == {"ray"} and "ray" not in DECLARED and "ray" not in DEV_ONLY
    assert "ray" in _names(PROJECT["optional-dependencies"]["dev"])  # the tests run the Ray batch for real
    assert "deploy/ray_batch.py" in third_party_imports()["ray"]
    assert "ray" not in third_party_imports(module_level=True)
    assert "torch" in third_party_imports(module_level=True)  # the module-level scan sees module-level imports
    eager = {m: sorted(f) for m, f in third_party_imports(module_level=True).items() if _distributions(m) & OPTIONAL}
    assert not eager, f"optional extras imported when the module is imported: {eager}"


def test_no_product_module_imports_a_dev_only_package() -> None:
    assert {"snntorch", "norse", "pytest"} <= DEV_ONLY
    offenders = {m: sorted(f) for m, f in third_party_imports().items() if _distributions(m) & DEV_ONLY}
    assert not offenders, f"product code imports dev-only packages: {offenders}"


@pytest.mark.parametrize("script", sorted(STANDALONE))
def test_standalone_scripts_are_not_imported_by_the_product(script: str) -> None:
    """The exemption above holds only while nothing in the product imports the script."""
    stem = Path(script).stem
    users = [p for folder in PRODUCT for p in (REPO / folder).rglob("*.py")
             if re.search(rf"^\s*(from\s+\S*\s+)?import\s+.*\b{stem}\b", p.read_text(encoding="utf-8"), re.M)]
    assert not users, users
