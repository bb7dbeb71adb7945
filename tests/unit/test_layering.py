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


def _import_graph() -> dict[str, set[str]]:
    modules = _our_modules()
    return {
        name: {imported for imported in _imports_of(path) if imported in modules} - {name}
        for name, path in modules.items()
    }


def test_no_two_modules_import_each_other_even_inside_a_function():
    assert _cycle(_import_graph()) is None


# The floors inside api/, lowest first: each package may import only the packages named
# here (and itself). The worker protocol sits above jobs and studies, since an epoch post
# reaches both (the pruner); jobs never imports studies; only api.main sees every package.
API_PACKAGE_IMPORTS: dict[str, set[str]] = {
    "web": set(),
    "artifacts": {"web"},
    "core": {"web", "artifacts"},
    "auth": {"web", "artifacts", "core"},
    "ops": {"web", "artifacts", "core", "auth"},
    "architectures": {"web", "artifacts", "core", "auth"},
    "jobs": {"web", "artifacts", "core", "auth", "ops"},
    "studies": {"web", "artifacts", "core", "auth", "ops", "jobs"},
    "workers": {"web", "artifacts", "core", "auth", "ops", "jobs", "studies"},
}
# The only modules api/ keeps at its top level.
API_TOP_LEVEL = {"api", "api.main"}


def _api_package(module: str) -> str | None:
    """The domain package of an api module (its __init__ included); None for api.main."""
    parts = module.split(".")
    return parts[1] if parts[0] == "api" and len(parts) > 1 and parts[1] != "main" else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import inside api/ that the package rules forbid, as "importer -> imported"."""
    broken = []
    for importer, imported_modules in sorted(graph.items()):
        package = _api_package(importer)
        if package is None:
            continue
        allowed = API_PACKAGE_IMPORTS.get(package, set()) | {package}
        for imported in sorted(imported_modules):
            if imported == "api.main" or (
                imported.startswith("api.") and _api_package(imported) not in allowed
            ):
                broken.append(f"{importer} -> {imported}")
    return broken


class TestApiPackages:
    def test_the_api_keeps_only_main_at_its_top_level_and_a_package_per_domain(self):
        api_modules = {name for name in _our_modules() if name.startswith("api")}
        top_level = {name for name in api_modules if _api_package(name) is None}
        packages = {_api_package(name) for name in api_modules} - {None}
        assert top_level == API_TOP_LEVEL
        assert packages == set(API_PACKAGE_IMPORTS)

    def test_no_package_imports_one_above_it(self):
        assert upward_imports(_import_graph()) == []

    def test_an_upward_import_is_caught(self):
        graph = {
            "api.jobs.ledger": {"api.core.models", "api.studies.reads"},
            "api.core.models": {"api.main"},
            "api.workers.routes": {"api.jobs.ledger", "api.studies.pruning"},
        }
        assert upward_imports(graph) == [
            "api.core.models -> api.main",
            "api.jobs.ledger -> api.studies.reads",
        ]
