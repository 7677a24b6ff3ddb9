"""The package's layering: the training library names no experiment and never reaches into the suite's
tooling, no experiment reaches into another, and no module imports itself back through others (no
import circle). Experiments come from the registry, so a new one is checked without editing this file."""

import ast
import re
from pathlib import Path

import pytest

from medrepro.suite import registry

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "medrepro"
EXPERIMENTS = registry.experiments_dir()


def imports(path: Path) -> set[str]:
    """Modules imported anywhere in the file (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def experiment_of(module: str) -> str | None:
    """`experiments.<name>[.…]` → name; None for modules outside an experiment."""
    parts = module.split(".")
    return parts[1] if parts[0] == "experiments" and len(parts) > 1 else None


def library_files() -> list[Path]:
    """Every module of shared/medrepro, subpackages included, but the suite's tooling and __main__.py (the
    package's entry point, `python -m medrepro`, which is the suite's command line)."""
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if p.relative_to(PACKAGE).parts[0] != "suite" and p != PACKAGE / "__main__.py")


def test_the_registry_lists_every_experiment_package():
    # Otherwise a package without experiment.py would escape the per-experiment checks below.
    packages = {p.parent.name for p in EXPERIMENTS.glob("*/__init__.py")}
    assert set(registry.names()) == packages


def test_the_library_imports_no_experiment_and_no_suite_module():
    for path in library_files():
        bad = {m for m in imports(path) if m.startswith(("experiments", "medrepro.suite"))}
        assert not bad, f"{path.name} imports {sorted(bad)}: the library must not depend on experiments or tooling"


@pytest.mark.parametrize("experiment", registry.names())
def test_the_library_does_not_name_the_experiment(experiment):
    for path in library_files():
        assert experiment not in path.read_text(), f"{path.name} names the experiment"


@pytest.mark.parametrize("experiment", registry.names())
def test_the_experiment_imports_no_other_experiment(experiment):
    others = [name for name in registry.names() if name != experiment]
    for path in sorted((EXPERIMENTS / experiment).rglob("*.py")):
        where = path.relative_to(EXPERIMENTS.parent)
        bad = {m for m in imports(path) if experiment_of(m) not in (None, experiment)}
        assert not bad, f"{where} imports {sorted(bad)}: shared code belongs in shared/medrepro"
        # Modules named in strings: "module:function" references of a declaration, importlib.
        text = path.read_text()
        named = [name for name in others if re.search(rf"\bexperiments\.{name}\b", text)]
        assert not named, f"{where} refers to experiments.{named[0]}: shared code belongs in shared/medrepro"


def test_no_import_circle_inside_the_package():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, "import circle: " + " → ".join([*stack[stack.index(name):], name])
        for dep in graph[name]:
            visit(dep, [*stack, name])

    for name in graph:
        visit(name, [])
