"""/metrics with several API processes: prometheus-client's multiprocess mode, on two real
uvicorn processes that share a database and a PROMETHEUS_MULTIPROC_DIR."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.stack import Stack

pytestmark = pytest.mark.integration

TOKEN = "integration-metrics-token"
JOB = {"name": "counted", "epochs": 1, "data": {"train_subset": 256, "test_subset": 64}}


def samples(api_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    response = httpx.get(
        f"{api_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def test_every_process_reports_the_requests_of_all_and_the_jobs_once(tmp_path: Path):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "TUNELAB_METRICS_TOKEN": TOKEN}
    database = f"sqlite:///{tmp_path}/tunelab.db"
    one, two = (
        Stack(tmp_path / name, database, "filesystem://", "training", extra_env=env)
        for name in ("one", "two")
    )
    for stack in (one, two):
        stack.workdir.mkdir()
    try:
        one.tunelab("db", "upgrade")
        key = one.create_key()
        # Started side by side: each takes seconds to import the app.
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(stack.start_api) for stack in (one, two)]:
                started.result()
        headers = {"Authorization": f"Bearer {key}"}
        job = httpx.post(f"{one.api_url}/v1/jobs", json=JOB, headers=headers, timeout=10)
        assert job.status_code == 201, job.text
        for _ in range(3):
            response = httpx.get(f"{one.api_url}/v1/jobs/{job.json()['id']}", headers=headers)
            assert response.status_code == 200

        # Each process writes its own files; either one answers for both.
        assert len(list(shared.glob("histogram_*.db"))) >= 2
        route = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "200"}
        for stack in (one, two):
            latency = samples(stack.api_url, "tunelab_http_request_duration_seconds_count")
            assert (route, 3.0) in latency
            # Counted in the database by the answering process alone, not once per process.
            queued = [
                v
                for labels, v in samples(stack.api_url, "tunelab_jobs")
                if labels == {"status": "queued"}
            ]
            assert queued == [1.0]
    except BaseException:
        print(one.logs(), two.logs())
        raise
    finally:
        two.stop()
        one.stop()
