"""A client generated from the live /openapi.json with openapi-python-client, as a user of
another language's generator would: no warnings, and a job driven through it end to end with
typed answers."""

import hashlib
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from testbed.stack import Stack

pytestmark = pytest.mark.integration

PACKAGE = "tunelab_generated"
JOB = {
    "name": "generated-client",
    "epochs": 2,
    "tags": ["generated"],
    "data": {"train_subset": 512, "test_subset": 128},
}


def generate(stack: Stack, folder: Path) -> str:
    """Generates the client package into `folder`; what the generator printed."""
    (folder / "openapi.json").write_bytes(httpx.get(f"{stack.api_url}/openapi.json").content)
    generator = Path(sys.executable).with_name("openapi-python-client")
    # Its post-generation hooks run ruff, which lives beside it.
    env = {**os.environ, "PATH": f"{generator.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--meta", "none"]
        + ["--output-path", PACKAGE, "--fail-on-warning"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def load(module: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{module}")


@pytest.fixture
def generated(embedded_stack: Stack, tmp_path: Path) -> Any:
    output = generate(embedded_stack, tmp_path)
    assert "Warning" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        yield load
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_a_generated_client_trains_a_job_with_typed_answers(embedded_stack: Stack, generated):
    client_module = generated("client")
    models = generated("models")
    client = client_module.AuthenticatedClient(
        base_url=embedded_stack.api_url, token=embedded_stack.create_key(), timeout=30.0
    )
    submit_job, get_job = generated("api.jobs.submit_job"), generated("api.jobs.get_job")
    job_metrics = generated("api.jobs.job_metrics")
    download = generated("api.jobs.download_checkpoint")
    analyze = generated("api.architectures.analyze_architecture")
    list_jobs = generated("api.jobs.list_jobs")

    with client:
        created = submit_job.sync(client=client, body=models.JobSpec.from_dict(JOB))
        assert isinstance(created, models.JobPublic), created
        assert created.status == models.JobStatus.QUEUED
        # The stored spec comes back as the spec model, its preset resolved into layers.
        assert isinstance(created.spec, models.JobSpec)
        assert created.spec.model.preset == "baseline" and created.spec.model.layers

        deadline = time.monotonic() + 180
        job = created
        while job.status in (models.JobStatus.QUEUED, models.JobStatus.RUNNING):
            assert time.monotonic() < deadline, "the job did not finish in 180 s"
            time.sleep(0.5)
            job = get_job.sync(job_id=created.id, client=client)
        assert job.status == models.JobStatus.SUCCEEDED, embedded_stack.logs()
        assert job.progress.epochs_completed == 2
        assert job.analysis.parameters > 0

        rows = job_metrics.sync(job_id=job.id, client=client).items
        assert [row.epoch for row in rows] == [0, 1]
        assert all(0.0 <= row.test_accuracy <= 1.0 for row in rows)

        tagged = list_jobs.sync(client=client, tag="generated").items
        assert [found.id for found in tagged] == [job.id]

        analysis = analyze.sync(
            client=client, body=models.ModelSpec.from_dict({"preset": "baseline"})
        )
        assert isinstance(analysis, models.Analysis)
        assert analysis.parameters == job.analysis.parameters
        assert analysis.layers[0].receptive_field == 3
        assert analysis.output_shape == [10]

        last = job.checkpoints[-1]
        answer = download.sync_detailed(job_id=job.id, name=last.name, client=client)
        assert answer.status_code == 200
        payload = answer.parsed.payload.read()
        digest = hashlib.sha256(payload).hexdigest()
        assert digest == answer.headers["x-checkpoint-sha256"] == last.sha256
        # `bytes` is a Python builtin: the generator names the attribute `bytes_`.
        assert len(payload) == last.bytes_
