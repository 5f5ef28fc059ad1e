"""Stages never import stages; the floor (and data/, config, models) imports no stage. Checked by parsing every
module's imports, including those inside functions, so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cst_dist"
STAGES = ("generation", "training", "evaluation", "bench")
ORCHESTRATORS = ("cli", "pipeline")  # thin layers that call the stages


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("cst_dist.")}


def owner(module: str) -> str:
    """`cst_dist.training.engine` -> `training`; `cst_dist.io` -> `io`."""
    return module.split(".")[1]


def modules() -> dict[str, set[str]]:
    return {str(path.relative_to(PACKAGE.parent)): imported_modules(path) for path in PACKAGE.rglob("*.py")}


def test_no_stage_imports_another_stage_and_the_floor_imports_none():
    graph = modules()
    assert len(graph) > 30  # the walk found the package
    violations = []
    for file, imports in graph.items():
        home = Path(file).parts[1].removesuffix(".py")
        if home in ORCHESTRATORS:
            continue
        for module in imports:
            target = owner(module)
            if target in STAGES and target != home:
                violations.append(f"{file} imports {module}")
    assert violations == []


def test_the_checker_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cst_dist.training.trainer import train\n")
    assert owner(next(iter(imported_modules(bad)))) == "training"


def test_chat_templates_are_rendered_in_one_module():
    """Every stage feeds a model the same ids for the same conversation: only cst_dist/chat.py renders a template."""
    package = Path(__file__).resolve().parents[1] / "cst_dist"
    callers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "apply_chat_template(" in path.read_text(encoding="utf-8"))
    assert callers == ["chat.py"]
