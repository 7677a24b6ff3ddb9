"""The package's layering: the training library names no experiment and never reaches into the suite's
tooling, and no module imports itself back through others (no import circle)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "medrepro"


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


def test_the_library_names_no_experiment_and_no_suite_module():
    # __main__.py is the package's entry point (`python -m medrepro`), which is the suite's command line.
    for path in set(PACKAGE.glob("*.py")) - {PACKAGE / "__main__.py"}:
        bad = {m for m in imports(path) if m.startswith(("experiments", "medrepro.suite"))}
        assert not bad, f"{path.name} imports {sorted(bad)}: the library must not depend on experiments or tooling"
        text = path.read_text()
        for name in ("retclip", "cross_encoder"):
            assert name not in text, f"{path.name} names the experiment {name!r}"


def test_no_import_circle_inside_the_package():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, "import circle: " + " → ".join([*stack[stack.index(name):], name])
        for dep in graph[name]:
            visit(dep, [*stack, name])

    for name in graph:
        visit(name, [])
