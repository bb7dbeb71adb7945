"""The `tunelab` command, run as a user runs it: a real process, settings from the environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import build_parser

REPO_ROOT = Path(__file__).resolve().parents[3]


def tunelab(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    environment.update(
        {
            "TUNELAB_DATABASE_URL": f"sqlite:///{tmp_path}/tunelab.db",
            "TUNELAB_DATA_DIR": str(tmp_path / "data"),
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestSettingsProblems:
    def test_a_wrong_setting_is_one_line(self, tmp_path):
        result = tunelab(tmp_path, "db", "upgrade", TUNELAB_DATABASE_URL="mysql://x")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "tunelab: TUNELAB_DATABASE_URL is not valid: Value error, must be a sqlite:/// or "
            "postgresql+psycopg:// URL"
        ]

    def test_the_api_needs_a_worker_token(self, tmp_path):
        result = tunelab(tmp_path, "api")
        assert (result.returncode, result.stderr.strip()) == (
            2,
            "tunelab: TUNELAB_WORKER_TOKEN must be set",
        )

    def test_the_api_refuses_an_unmigrated_database(self, tmp_path):
        result = tunelab(tmp_path, "api", TUNELAB_WORKER_TOKEN="t")
        assert result.returncode == 2
        assert "run `tunelab db upgrade`" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_the_api_names_an_unreachable_database(self, tmp_path):
        url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
        result = tunelab(tmp_path, "api", TUNELAB_WORKER_TOKEN="t", TUNELAB_DATABASE_URL=url)
        assert result.returncode == 2
        assert result.stderr.startswith("tunelab: cannot reach the database at")
        assert len(result.stderr.strip().splitlines()) == 1


class TestKeys:
    def test_create_list_revoke(self, tmp_path):
        assert tunelab(tmp_path, "db", "upgrade").returncode == 0
        created = tunelab(tmp_path, "keys", "create", "acme")
        assert created.returncode == 0
        key = created.stdout.strip().splitlines()[-1]
        prefix = key.split("_")[1]
        listed = tunelab(tmp_path, "keys", "list").stdout
        assert prefix in listed and "acme" in listed and "active" in listed
        assert key not in listed
        assert tunelab(tmp_path, "keys", "revoke", prefix).returncode == 0
        assert "revoked" in tunelab(tmp_path, "keys", "list").stdout
        assert tunelab(tmp_path, "keys", "revoke", "nope").returncode == 1


class TestParser:
    @pytest.mark.parametrize(
        "argv",
        [
            ["api", "--host", "0.0.0.0", "--port", "9000"],
            ["worker", "--concurrency", "2"],
            ["dev", "--port", "1"],
            ["db", "upgrade"],
            ["keys", "create", "t"],
            ["keys", "list"],
            ["keys", "revoke", "p"],
            ["data", "prepare"],
        ],
    )
    def test_every_command_parses(self, argv):
        assert callable(build_parser().parse_args(argv).handler)
