"""The floors of the architecture: the api never loads torch, shared/ loads neither torch nor
the database, and api and worker never import each other."""

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
