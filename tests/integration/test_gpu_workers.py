"""`tunelab worker --gpus 0,1` (and `--gpus 0 --per-gpu 2`) on the embedded default: two real
Celery workers under one supervisor, each started seeing only its own device, training a job
each at the same time, and both stopped by one SIGTERM to the supervisor. (Without a GPU, each
trains on the CPU: what is checked is what each process was given.)"""

import signal
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from testbed.stack import Stack, wait_until
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.integration.proc import children_of, environment_of

pytestmark = pytest.mark.integration

# Long enough (a few seconds each on one thread) for the two jobs to overlap.
JOB = {"epochs": 2, "data": {"train_subset": 2000, "test_subset": 200}}
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.mark.parametrize(
    ("options", "workers"),
    [
        (["--gpus", "0,1"], {"node-7-gpu0": "0", "node-7-gpu1": "1"}),
        (["--gpus", "0", "--per-gpu", "2"], {"node-7-gpu0-0": "0", "node-7-gpu0-1": "0"}),
    ],
    ids=["one-per-gpu", "two-on-one-gpu"],
)
def test_workers_per_gpu_each_seeing_only_its_device(
    tmp_path: Path, options: list[str], workers: dict[str, str]
):
    env = {"TUNELAB_WORKER_NAME": "node-7", "TUNELAB_TORCH_THREADS": "1"}
    stack = Stack(
        tmp_path, f"sqlite:///{tmp_path}/tunelab.db", "filesystem://", "training", extra_env=env
    )
    write_synthetic_mnist(tmp_path / "data", train=2000, test=200)
    try:
        stack.tunelab("db", "upgrade")
        stack.start_api()
        key = stack.create_key()
        supervisor = stack.start("worker", "worker", *options)

        def both_ready() -> bool:
            if supervisor.popen.poll() is not None:
                raise RuntimeError(f"the supervisor exited:\n{supervisor.log()[-3000:]}")
            return supervisor.log().count(" ready.") == 2

        wait_until(both_ready, 90, "both workers to be ready")
        seen = {
            environment_of(pid)["TUNELAB_WORKER_NAME"]: environment_of(pid)["CUDA_VISIBLE_DEVICES"]
            for pid in children_of(supervisor.popen.pid)
        }
        assert seen == workers
        for name in workers:
            assert f"celery@{name}" in supervisor.log()

        with httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            ids = [
                client.post("/v1/jobs", json={**JOB, "seed": seed}).json()["id"] for seed in (1, 2)
            ]

            def finished() -> list[dict[str, object]] | None:
                jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
                return jobs if all(job["status"] in FINISHED for job in jobs) else None

            jobs = wait_until(finished, 90, "both jobs to finish")
        assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
        assert {job["worker"] for job in jobs} == set(workers)
        (start_a, end_a), (start_b, end_b) = (
            (
                datetime.fromisoformat(str(job["started_at"])),
                datetime.fromisoformat(str(job["finished_at"])),
            )
            for job in jobs
        )
        assert start_a < end_b and start_b < end_a, "the two jobs trained one after the other"

        workers = children_of(supervisor.popen.pid)
        supervisor.popen.send_signal(signal.SIGTERM)  # to the supervisor alone
        assert supervisor.popen.wait(timeout=30) == 0, supervisor.log()[-3000:]
        assert not any(children_of(pid) for pid in workers)
        assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
