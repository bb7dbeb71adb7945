"""docker-compose.yml and the Dockerfile checked against the code they run, without Docker:
commands must parse with the real CLI and every TUNELAB_* name must be a real setting."""

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import parse_args
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
S3_OVERRIDE = ROOT / "docker-compose.s3.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"postgres", "redis", "migrate", "api", "worker"}


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _parses(argv: list[str]) -> Any:
    assert argv[0] == "tunelab", argv
    try:
        return parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` does not parse with the tunelab CLI")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source, for short ("src:dst[:mode]") and long volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's TUNELAB_* variables make, and nothing from this machine's."""
    for key in [k for k in os.environ if k.startswith("TUNELAB_")]:
        monkeypatch.delenv(key)
    prefix = len("TUNELAB_")
    return Settings(
        **{key[prefix:].lower(): value for key, value in env.items() if key.startswith("TUNELAB_")}
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # Read raw: ${VAR:?msg} interpolation is left as text, which is all these checks need.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


class TestCompose:
    def test_has_the_five_services_and_prometheus_behind_a_profile(self, services):
        always = {name for name, service in services.items() if not service.get("profiles")}
        assert always == SERVICES
        assert services["prometheus"]["profiles"] == ["metrics"]

    def test_tunelab_commands_parse_with_the_cli(self, services):
        commands = {
            name: _argv(service["command"])
            for name, service in services.items()
            if "command" in service and _argv(service["command"])[0] == "tunelab"
        }
        assert {"migrate", "api", "worker"} <= set(commands)
        for argv in commands.values():
            _parses(argv)
        assert _parses(commands["api"]).command == "api"
        assert _parses(commands["worker"]).command == "worker"

    def test_api_listens_on_all_interfaces_at_the_published_port(self, services):
        args = _parses(_argv(services["api"]["command"]))
        assert args.host == "0.0.0.0"
        assert any(str(port).endswith(f":{args.port}") for port in services["api"]["ports"])

    def test_tunelab_variables_are_settings_fields(self, services):
        fields = {f"TUNELAB_{name.upper()}" for name in Settings.model_fields}
        used = {
            key
            for service in services.values()
            for key in _environment(service)
            if key.startswith("TUNELAB_")
        }
        assert used, "no TUNELAB_* variables found"
        assert used <= fields, f"not settings: {sorted(used - fields)}"

    def test_interpolated_variables_are_settings_or_postgres_ones(self):
        fields = {f"TUNELAB_{name.upper()}" for name in Settings.model_fields}
        names = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
        unknown = {n for n in names if n not in fields and not n.startswith("POSTGRES_")}
        assert not unknown, f"unknown variables: {sorted(unknown)}"

    def test_service_environment_is_valid_settings(self, services, monkeypatch):
        settings = _settings_from(_environment(services["api"]), monkeypatch)
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url.startswith("redis://")

    def test_worker_reserves_a_gpu(self, services):
        devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
            for device in devices
        )

    def test_worker_stop_grace_outlasts_the_hand_back(self, services):
        grace = services["worker"]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > Settings().handback_grace_seconds

    def test_the_worker_prepares_mnist_in_a_volume_of_its_own(self, compose, services):
        # A worker on another node has no disk in common with the API, and this one neither.
        api, worker = services["api"], services["worker"]
        path = _environment(worker)["TUNELAB_DATA_DIR"]
        source = _mounts(worker).get(path)
        assert source in (compose.get("volumes") or {}), f"worker mounts no named volume at {path}"
        assert source not in _mounts(api).values()

    def test_the_api_runs_two_processes_and_the_worker_one_per_gpu(self, services):
        assert _parses(_argv(services["api"]["command"])).workers == 2
        assert _parses(_argv(services["worker"]["command"])).gpus == "all"
        devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert [device["count"] for device in devices] == ["all"]

    def test_prometheus_scrapes_the_api_with_the_metrics_token(self, compose, services):
        config = yaml.safe_load(compose["configs"]["prometheus"]["content"])
        (scrape,) = config["scrape_configs"]
        assert scrape["metrics_path"] == "/metrics"
        assert scrape["authorization"]["credentials"].startswith("${TUNELAB_METRICS_TOKEN")
        port = _parses(_argv(services["api"]["command"])).port
        assert scrape["static_configs"][0]["targets"] == [f"api:{port}"]
        assert "TUNELAB_METRICS_TOKEN" in _environment(services["api"])

    def test_only_the_api_mounts_the_artifact_store(self, compose, services):
        # Workers upload checkpoints over HTTP: they share no disk with the API.
        api, worker = services["api"], services["worker"]
        path = _environment(api)["TUNELAB_ARTIFACT_DIR"]
        source = _mounts(api).get(path)
        assert source in (compose.get("volumes") or {}), f"api mounts no named volume at {path}"
        assert path not in _mounts(worker)
        assert source not in _mounts(worker).values()
        assert _environment(worker)["TUNELAB_WORKER_DIR"] != path

    def test_migrate_runs_first(self, services):
        assert _argv(services["migrate"]["command"]) == ["tunelab", "db", "upgrade"]
        depends = services["api"]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    def test_waits_only_on_services_with_healthchecks(self, services):
        for service in services.values():
            depends = service.get("depends_on") or {}
            for name, rule in depends.items() if isinstance(depends, dict) else []:
                assert name in services
                if rule.get("condition") == "service_healthy":
                    assert "healthcheck" in services[name], f"{name} has no healthcheck"


class TestDockerfile:
    def test_cmd_parses_with_the_cli(self):
        lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD")]
        assert len(lines) == 1
        value = lines[0][len("CMD") :].strip()
        argv = json.loads(value) if value.startswith("[") else shlex.split(value)
        args = _parses(argv)
        assert args.command == "api"
        assert args.host == "0.0.0.0"


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.safe_load(S3_OVERRIDE.read_text())


class TestS3Override:
    def test_points_the_api_at_the_bucket_it_makes(self, override):
        services = override["services"]
        env = _environment(services["api"])
        bucket = env["TUNELAB_ARTIFACT_URL"].removeprefix("s3://").split("/")[0]
        assert env["TUNELAB_ARTIFACT_URL"].startswith("s3://")
        made = " ".join(services["bucket"]["entrypoint"])
        assert f"mc mb --ignore-existing store/{bucket}" in made
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert services["api"]["depends_on"]["bucket"]["condition"] == (
            "service_completed_successfully"
        )

    def test_credentials_are_the_ones_minio_starts_with(self, override):
        services = override["services"]
        api, minio = _environment(services["api"]), _environment(services["minio"])
        assert api["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert api["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]

    def test_only_the_api_is_given_the_store(self, override):
        assert "worker" not in override["services"]

    def test_the_api_settings_with_the_store_are_valid(self, compose, override, monkeypatch):
        env = {
            **_environment(compose["services"]["api"]),
            **_environment(override["services"]["api"]),
        }
        settings = _settings_from(env, monkeypatch)
        assert settings.artifact_url == "s3://tunelab/checkpoints"

    def test_the_bucket_is_made_once_minio_is_healthy(self, override):
        services = override["services"]
        assert "healthcheck" in services["minio"]
        assert services["bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
