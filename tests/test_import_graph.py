"""Stages never import stages; the floor (and data/, config, models) imports no stage. Checked by parsing every
module's imports, including those inside functions, so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cst_dist"
STAGES = ("generation", "build", "training", "evaluation", "bench")
ORCHESTRATORS = ("cli", "pipeline")  # thin layers that call the stages


def imported_modules(path: Path, package: str = "cst_dist") -> set[str]:
    """Every `cst_dist.*` module `path` imports; `package` is the file's own package, for relative imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("cst_dist.")}


def owner(module: str) -> str:
    """`cst_dist.training.engine` -> `training`; `cst_dist.io` -> `io`."""
    return module.split(".")[1]


def modules() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        graph[str(path.relative_to(PACKAGE.parent))] = imported_modules(path, package)
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """`<file> imports <module>` for every stage module imported outside its own stage and the orchestrators."""
    found = []
    for file, imports in graph.items():
        home = Path(file).parts[1].removesuffix(".py")
        if home in ORCHESTRATORS:
            continue
        found += [f"{file} imports {module}" for module in sorted(imports)
                  if owner(module) in STAGES and owner(module) != home]
    return found


def test_no_stage_imports_another_stage_and_the_floor_imports_none():
    graph = modules()
    assert len(graph) > 30  # the walk found the package
    assert "cst_dist/build/run.py" in graph and "cst_dist/data/preference_set.py" in graph
    assert violations(graph) == []


def test_the_checker_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cst_dist.training.trainer import train\n")
    assert owner(next(iter(imported_modules(bad)))) == "training"
    lazy_build = tmp_path / "lazy_build.py"
    lazy_build.write_text("def f():\n    from cst_dist import build\n    import cst_dist.build.run\n")
    relative = tmp_path / "relative.py"
    relative.write_text("from ..build.rows import expand\nfrom ..training import data\n")
    graph = {
        "cst_dist/training/data.py": imported_modules(lazy_build),  # a stage importing the build stage
        "cst_dist/evaluation/x.py": imported_modules(relative, "cst_dist.evaluation"),  # relative, into two stages
        "cst_dist/data/preference_set.py": imported_modules(bad),  # the data floor importing a stage
        "cst_dist/build/run.py": {"cst_dist.build.rows", "cst_dist.data.preference_set"},  # its own room: fine
        "cst_dist/cli.py": {"cst_dist.build.run", "cst_dist.training.trainer"},  # orchestrators may
    }
    assert violations(graph) == [
        "cst_dist/training/data.py imports cst_dist.build",
        "cst_dist/training/data.py imports cst_dist.build.run",
        "cst_dist/evaluation/x.py imports cst_dist.build.rows",
        "cst_dist/evaluation/x.py imports cst_dist.build.rows.expand",
        "cst_dist/evaluation/x.py imports cst_dist.training",
        "cst_dist/evaluation/x.py imports cst_dist.training.data",
        "cst_dist/data/preference_set.py imports cst_dist.training.trainer",
        "cst_dist/data/preference_set.py imports cst_dist.training.trainer.train",
    ]


def test_chat_templates_are_rendered_in_one_module():
    """Every stage feeds a model the same ids for the same conversation: only cst_dist/chat.py renders a template."""
    package = Path(__file__).resolve().parents[1] / "cst_dist"
    callers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "apply_chat_template(" in path.read_text(encoding="utf-8"))
    assert callers == ["chat.py"]
