"""The floors of the architecture: the api never loads torch, shared/ loads neither torch nor
the database, and api and worker never import each other."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def modules_loaded_by(statement: str) -> set[str]:
    script = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in result.stdout.split()}


class TestLayering:
    def test_the_api_never_imports_torch(self):
        loaded = modules_loaded_by("from api.main import create_app; import cli.main")
        assert "torch" not in loaded
        assert "worker" not in loaded

    @pytest.mark.parametrize("module", sorted(p.stem for p in (REPO_ROOT / "shared").glob("*.py")))
    def test_shared_imports_neither_torch_nor_the_database(self, module):
        loaded = modules_loaded_by(f"import shared.{module}")
        assert not loaded & {"torch", "sqlalchemy", "sqlmodel", "api", "worker"}

    def test_the_worker_never_imports_the_api(self):
        loaded = modules_loaded_by("import worker.tasks")
        assert "api" not in loaded
        assert "sqlmodel" not in loaded


def _imports_of(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _our_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as a list of modules, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return [*visiting[visiting.index(module) :], module]
        if module in done:
            return None
        visiting.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


PACKAGES = ("api", "worker", "shared", "cli")


def test_no_two_modules_import_each_other_even_inside_a_function():
    modules = _our_modules()
    graph = {
        name: {imported for imported in _imports_of(path) if imported in modules} - {name}
        for name, path in modules.items()
    }
    assert _cycle(graph) is None
