"""One tenant submits what once held the API for seconds, took gigabytes or never ended: a
grid of a trillion points, an int range over every 32-bit seed, a body of some 12,000
choices, widths of thousands of digits, a study whose paths fall apart when sampled and one
whose confirmation seeds pass 2**31 - 1. On a real API under uvicorn (the embedded default,
with a worker), each is answered within a second, a 422 or a study that ends; the API's
memory hardly grows; and another tenant's requests go on being answered quickly."""

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.stack import Stack, wait_until
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.figures import figure

pytestmark = pytest.mark.integration

MAX_INT32 = 2**31 - 1
# The studies' base: 200 images held out to validate on (synthetic MNIST's 2,000 training
# images leave no room for a study's default of 10,000).
QUICK = {
    "epochs": 1,
    "batch_size": 64,
    "data": {"train_subset": 256, "test_subset": 64, "validation": 200},
}
ENDED = {"succeeded", "failed", "cancelled"}
# What each hostile request, the API's memory and the bystander's requests may cost.
ANSWER_SECONDS = 1.0
RSS_GROWTH_BYTES = 50 * 2**20
BYSTANDER_P99_SECONDS = 0.200
# Enough of the bystander's requests for a 99th percentile that one slow answer does not make.
BYSTANDER_REQUESTS = 400
# An integer JSON allows and Python parses, but whose square it will not print.
HUGE = "1" + "0" * 4000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The embedded default with one worker. The request limit is raised, so that the
    bystander's loop measures latency, not the rate limiter; the worker trains on one
    thread, leaving the API a core of the two."""
    stack = Stack(
        tmp_path,
        f"sqlite:///{tmp_path}/tunelab.db",
        "filesystem://",
        "training",
        extra_env={"TUNELAB_REQUESTS_PER_MINUTE": "100000", "TUNELAB_TORCH_THREADS": "1"},
    )
    write_synthetic_mnist(stack.workdir / "data", train=2000, test=500)
    try:
        worker = stack.start_worker(wait=False)
        stack.tunelab("db", "upgrade")
        stack.start_api()
        stack.wait_for_worker(worker)
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop(kill_workers=True)


def resident_bytes(pid: int) -> int:
    """The process's resident memory, from /proc/PID/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class Bystander:
    """Another tenant listing its jobs in a loop on a thread, every answer timed."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.client = stack.client(key, timeout=10)
        self.seconds: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Bystander":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status = self.client.get("/v1/jobs", params={"limit": 20}).status_code
            except httpx.HTTPError as error:
                self.failures.append(repr(error))
                continue
            self.seconds.append(time.perf_counter() - started)
            if status != 200:
                self.failures.append(f"status {status}")
            self._stop.wait(0.02)

    def p99(self) -> float:
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[98]


class Hostile:
    """The hostile tenant's requests, each timed."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.timings: dict[str, float] = {}

    def post(self, name: str, path: str, body: dict[str, Any] | str) -> httpx.Response:
        content = body if isinstance(body, str) else json.dumps(body)
        started = time.perf_counter()
        response = self.client.post(
            path, content=content, headers={"content-type": "application/json"}
        )
        self.timings[name] = time.perf_counter() - started
        return response


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [error["field"] for error in response.json()["errors"]]


def created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_study(client: httpx.Client, study_id: str, timeout: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        study = client.get(f"/v1/studies/{study_id}").json()
        return study if study["status"] in ENDED else None

    return wait_until(ended, timeout, f"study {study_id} to end", interval=0.5)


def trials(client: httpx.Client, study_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/studies/{study_id}/trials").json()["items"]


def many_choices_body() -> str:
    """Some 12,400 choices over the 16 dimensions a space may have: 61 KB."""
    paths = [
        "seed",
        "batch_size",
        "epochs",
        "optimizer.lr",
        "name",
        "label_smoothing",
        "optimizer.momentum",
        "optimizer.weight_decay",
        "data.train_subset",
        "data.test_subset",
        "schedule.pct_start",
        "schedule.max_lr",
        "model.dropout",
        "data.augment.rotation_degrees",
        "data.augment.translate",
        "model.layers[0].out_channels",
    ]
    choices = list(range(1, 12_400 // len(paths) + 1))
    space = {path: {"type": "categorical", "choices": choices} for path in paths}
    return json.dumps({"base": QUICK, "space": space})


def test_a_hostile_tenant_is_answered_quickly_and_costs_the_api_little(stack: Stack):
    hostile_key, bystander_key = stack.create_key("hostile"), stack.create_key("bystander")
    with stack.client(hostile_key) as client:
        # A study run to its end first, so that what the API loads on first use (the
        # sampler, the scheduler's queries, the worker routes) is in the baseline.
        warm_up = {
            "base": QUICK,
            "space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}},
            "sampler": {"name": "random", "seed": 1},
            "max_trials": 1,
        }
        assert wait_for_study(client, created(client.post("/v1/studies", json=warm_up)))
        api_pid = stack.api.popen.pid
        rss_before = resident_bytes(api_pid)
        hostile = Hostile(client)

        with Bystander(stack, bystander_key) as bystander:
            grid = hostile.post(
                "grid of 10**12 points",
                "/v1/studies",
                {
                    "base": QUICK,
                    # Every bound a valid job: only the grid's size is wrong.
                    "space": {
                        "seed": {"type": "int", "low": 0, "high": 9_999},
                        "batch_size": {"type": "int", "low": 1, "high": 1_000},
                        "epochs": {"type": "int", "low": 1, "high": 100},
                        "data.test_subset": {"type": "int", "low": 1, "high": 1_000},
                    },
                    "sampler": {"name": "grid"},
                },
            )
            assert fields(grid) == ["space"]

            wide = created(
                hostile.post(
                    "seed over 0..2**31-1",
                    "/v1/studies",
                    {
                        "base": QUICK,
                        "space": {"seed": {"type": "int", "low": 0, "high": MAX_INT32}},
                        "sampler": {"name": "random", "seed": 2},
                        "max_trials": 1,
                    },
                )
            )

            many = hostile.post("12,400 choices", "/v1/studies", many_choices_body())
            assert 'space["seed"].choices' in fields(many)
            many_bytes = len(many.content)

            widths = hostile.post(
                "widths of 10**4000",
                "/v1/jobs",
                '{"model": {"layers": [{"type": "flatten"}, '
                f'{{"type": "linear", "out_features": {HUGE}}}, '
                f'{{"type": "linear", "out_features": {HUGE}}}]}}}}',
            )
            assert "model.layers[1].out_features" in fields(widths)

            preset = hostile.post(
                "a list as a preset choice",
                "/v1/studies",
                {
                    "base": QUICK,
                    "space": {
                        "model.preset": {"type": "categorical", "choices": ["baseline", ["x"]]}
                    },
                },
            )
            assert fields(preset) == ['space["model.preset"].choices']

            paths_fall_apart = created(
                hostile.post(
                    "schedule and schedule.milestones[0]",
                    "/v1/studies",
                    {
                        "base": {
                            **QUICK,
                            "epochs": 3,
                            "schedule": {"name": "multistep", "milestones": [1]},
                        },
                        "space": {
                            "schedule": {
                                "type": "categorical",
                                "choices": [{"name": "step", "step_size": 1}, {"name": "constant"}],
                            },
                            "schedule.milestones[0]": {"type": "int", "low": 1, "high": 2},
                        },
                        "sampler": {"name": "random", "seed": 3},
                        "max_trials": 3,
                    },
                )
            )

            seeds_past_the_top = created(
                hostile.post(
                    "confirmation seeds past 2**31-1",
                    "/v1/studies",
                    {
                        "base": {**QUICK, "seed": MAX_INT32},
                        "space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                        "sampler": {"name": "random", "seed": 4},
                        "max_trials": 1,
                        "confirm": {"top_k": 1, "seeds": 2},
                    },
                )
            )

            ended = {
                name: wait_for_study(client, study_id)
                for name, study_id in [
                    ("wide", wide),
                    ("paths", paths_fall_apart),
                    ("seeds", seeds_past_the_top),
                ]
            }
            rss_after = resident_bytes(api_pid)
            wait_until(
                lambda: len(bystander.seconds) >= BYSTANDER_REQUESTS,
                60,
                f"{BYSTANDER_REQUESTS} of the bystander's requests",
            )

        growth = rss_after - rss_before
        for name, seconds in hostile.timings.items():
            figure(f"[hostile] {name}: answered in {seconds * 1000:.0f} ms")
        figure(f"[hostile] the 422 to 12,400 choices: {many_bytes:,} bytes")
        figure(
            f"[hostile] API resident memory: {rss_before / 2**20:.1f} MiB before, "
            f"{rss_after / 2**20:.1f} MiB after, growth {growth / 2**20:+.1f} MiB"
        )
        figure(
            f"[hostile] bystander: {len(bystander.seconds)} GET /v1/jobs, p50 "
            f"{statistics.median(bystander.seconds) * 1000:.1f} ms, p99 "
            f"{bystander.p99() * 1000:.1f} ms, max {max(bystander.seconds) * 1000:.1f} ms, "
            f"{len(bystander.failures)} failures"
        )

        assert all(seconds < ANSWER_SECONDS for seconds in hostile.timings.values())
        assert ended["wide"]["status"] == "succeeded", ended["wide"]

        assert ended["paths"]["status"] == "failed"
        assert ended["paths"]["error"]["type"] == "no_trial_succeeded"
        reasons = [t["reason"] for t in trials(client, paths_fall_apart)]
        assert len(reasons) == 3 and all("schedule.milestones" in r for r in reasons)

        assert ended["seeds"]["status"] == "succeeded", ended["seeds"]
        seeds = [t["seed"] for t in trials(client, seeds_past_the_top)]
        assert seeds == [MAX_INT32, 0, 1]

        assert growth < RSS_GROWTH_BYTES
        assert bystander.failures == []
        assert bystander.p99() < BYSTANDER_P99_SECONDS
