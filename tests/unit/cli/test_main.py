"""The `tunelab` command, run as a user runs it: a real process, settings from the environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app, parse_args

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


class TestClientCommands:
    def test_a_client_command_needs_an_api_key(self, tmp_path):
        result = tunelab(tmp_path, "study", "show", "stu_1")
        assert (result.returncode, result.stderr.strip()) == (
            2,
            "tunelab: TUNELAB_API_KEY must be set",
        )

    def test_an_unreachable_api_is_one_line(self, tmp_path):
        result = tunelab(
            tmp_path,
            "study",
            "show",
            "stu_1",
            TUNELAB_API_URL="http://127.0.0.1:1",
            TUNELAB_API_KEY="tl_x",
        )
        assert result.returncode == 1
        assert result.stderr.startswith("tunelab: cannot reach the API at http://127.0.0.1:1: ")
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stdout == ""

    def test_a_study_file_that_is_not_json_is_one_line(self, tmp_path):
        (tmp_path / "s.json").write_text("{nope")
        result = tunelab(tmp_path, "study", "create", str(tmp_path / "s.json"))
        assert result.returncode == 1
        assert result.stderr.startswith(f"tunelab: {tmp_path / 's.json'} is not JSON: ")
        assert len(result.stderr.strip().splitlines()) == 1

    def test_export_never_overwrites_a_file_without_force(self, tmp_path):
        (tmp_path / "x.db").write_text("mine")
        result = tunelab(tmp_path, "study", "export", "stu_1", "-o", str(tmp_path / "x.db"))
        assert (result.returncode, result.stderr.strip()) == (
            1,
            f"tunelab: {tmp_path / 'x.db'} exists; pass --force to replace it",
        )
        assert (tmp_path / "x.db").read_text() == "mine"


COMMANDS = [
    (["api", "--host", "0.0.0.0", "--port", "9000"], {"host": "0.0.0.0", "port": 9000}),
    (["worker", "--concurrency", "2"], {"concurrency": 2}),
    (["dev", "--port", "1"], {"host": "127.0.0.1", "port": 1, "tenant": "default"}),
    (["db", "upgrade"], {}),
    (["keys", "create", "t"], {"tenant": "t"}),
    (["keys", "list"], {}),
    (["keys", "revoke", "p"], {"prefix": "p"}),
    (["data", "prepare"], {}),
    (["study", "create", "s.json", "--watch"], {"watch": True}),
    (["study", "show", "stu_1", "--json"], {"study_id": "stu_1", "as_json": True}),
    (["study", "trials", "stu_1", "--order", "value"], {"study_id": "stu_1", "order": "value"}),
    (["study", "cancel", "stu_1"], {"study_id": "stu_1"}),
    (["study", "watch", "stu_1"], {"study_id": "stu_1"}),
    (["study", "export", "stu_1", "-o", "x.db"], {"study_id": "stu_1", "force": False}),
]


class TestCommandLine:
    @pytest.mark.parametrize(("argv", "params"), COMMANDS, ids=lambda v: " ".join(v)[:40])
    def test_every_command_parses(self, argv, params):
        parsed = parse_args(argv)
        words = [word for word in argv if not word.startswith("-")]
        assert parsed.command == argv[0]
        assert parsed.path == words[: len(parsed.path)]
        assert params.items() <= vars(parsed).items()

    @pytest.mark.parametrize("argv", [argv for argv, _ in COMMANDS], ids=lambda v: " ".join(v)[:40])
    def test_every_command_has_help(self, argv):
        path = parse_args(argv).path
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert f"tunelab {' '.join(path)}" in " ".join(result.output.split())

    @pytest.mark.parametrize(
        "argv",
        [["nope"], ["db"], ["api", "--port", "x"], ["study", "trials", "s", "--order", "best"]],
    )
    def test_a_wrong_command_line_exits_2(self, argv):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2

    def test_a_wrong_command_line_exits_2_at_the_terminal(self, tmp_path):
        result = tunelab(tmp_path, "study", "trials", "stu_1", "--order", "best")
        assert result.returncode == 2
        assert "best" in result.stderr
