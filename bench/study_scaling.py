"""bench-study's scaling rows: what an epoch post and a scheduler's ask cost as a study grows,
each decision made two ways in the same run. "before" rebuilds the in-memory Optuna study
from every trial the ledger holds for each decision (study_memory's `remember=False`: what
every decision cost before the memory); "after" keeps the ended trials and the Optuna
studies between decisions and reads and tells only what changed (api/studies/study_memory.py).

The API runs in this process (its routes through an ASGI test client, so that one process
can switch between the two ways) on a PostgreSQL database of its own; the bench plays the
scheduler's passes and the worker. A seeded TPE study with the ASHA pruner grows to each
size; then, alternating the two ways, the bench asks for 2 x ASKS trials as the scheduler
does (read the study, ask the sampler; each trial then stored and queued, untimed) and
plays those trials' epochs, timing each epoch post (the worker's POST .../epochs: record
the metrics, ask the pruner, one commit), ROUNDS times.
"""

import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel

from api.auth.keys import create_key
from api.core.db import make_engine
from api.core.models import Study
from api.jobs.ledger import dispatch
from api.main import create_app
from api.studies.ledger import add_trial_job
from api.studies.optuna_bridge import Asked, TrialRecord
from api.studies.reads import optuna_records
from api.studies.scheduler import StudyScheduler
from api.studies.study_memory import MEMORY
from shared.settings import Settings
from shared.study_checks import admit_trial
from testbed.services import POSTGRES_ADMIN, fresh_database

SIZES = (10, 100, 200)
# Trials asked each way in a round, and rounds at each size; the trials of a round run at
# once, and their epoch posts are the ones timed.
ASKS = 4
ROUNDS = 5
EPOCHS = 6
# Targets at 200 trials, after.
POST_P50_TARGET_MS = 20.0
ASK_TARGET_MS = 100.0
WORKER_TOKEN = "bench-worker-token"


def scaling_study(trials: int) -> dict[str, Any]:
    return {
        "name": "bench-scaling",
        "base": {
            "epochs": EPOCHS,
            "data": {"train_subset": 4000, "test_subset": 2000, "validation": 2000},
        },
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "sampler": {"name": "tpe", "seed": 7},
        "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 3},
        "max_trials": trials,
        "max_parallel_trials": 2 * ASKS,
    }


def validation_accuracy(lr: float, epoch: int, rng: random.Random) -> float:
    """A made-up learning curve: best near lr 0.05, rising with the epochs, a little noise."""
    quality = math.exp(-((math.log10(lr) - math.log10(0.05)) ** 2))
    noise = rng.uniform(-0.01, 0.01)
    return round(min(0.99, max(0.0, 0.1 + 0.85 * quality * (epoch + 1) / EPOCHS + noise)), 6)


def epoch_metrics(epoch: int, accuracy: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 1 - accuracy,
        "train_accuracy": accuracy,
        "test_loss": 1 - accuracy,
        "test_accuracy": accuracy,
        "val_loss": 1 - accuracy,
        "val_accuracy": accuracy,
        "lr": 0.05,
        "batch_size": 128,
        "epoch_seconds": 1.0,
        "images_per_second": 4000.0,
    }


class SentJobs:
    """Stands in for the broker: the jobs it was asked to send, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, job_id: str) -> bool:
        self.sent.append(job_id)
        return True

    def ping(self) -> None:
        return None


@contextmanager
def remembering(remember: bool) -> Iterator[None]:
    before = MEMORY.remember
    MEMORY.remember = remember
    try:
        yield
    finally:
        MEMORY.remember = before


@dataclass
class Timings:
    """Milliseconds, by way ("before", "after")."""

    posts: dict[str, list[float]] = field(default_factory=lambda: {"before": [], "after": []})
    asks: dict[str, list[float]] = field(default_factory=lambda: {"before": [], "after": []})


class ScalingRun:
    """The API in process on its own database, a study, and the bench as its scheduler and
    worker."""

    def __init__(self, engine: Engine, settings: Settings, max_trials: int) -> None:
        self.engine, self.settings = engine, settings
        self.jobs = SentJobs()
        self.client = TestClient(create_app(settings, engine=engine, dispatcher=self.jobs))
        self.worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        with Session(engine) as session:
            _, key = create_key(session, "bench")
        self.tenant = {"Authorization": f"Bearer {key}"}
        created = self.client.post(
            "/v1/studies", json=scaling_study(max_trials), headers=self.tenant
        )
        created.raise_for_status()
        self.study_id = created.json()["id"]
        self.scheduler = StudyScheduler(engine, self.jobs, settings)
        self.played: set[str] = set()
        self.rng = random.Random(1)

    def grow_to(self, trials: int) -> int:
        """Runs the study (remembering) until at least `trials` trials have ended."""
        while len(self.played) < trials:
            self.scheduler.run_once()
            self.play_sent(lambda: "after", None)
        return len(self.played)

    def play_sent(self, way: Callable[[], str], timings: Timings | None) -> None:
        """Claims every job sent and not played, and reports their epochs round by round,
        each post made the way `way` says; `timings` takes each post's time."""
        running = {}
        for job_id in [job_id for job_id in self.jobs.sent if job_id not in self.played]:
            self.played.add(job_id)
            claim = self.client.post(
                f"/internal/v1/jobs/{job_id}/claim", json={"worker": "bench"}, headers=self.worker
            ).json()
            attempt = {"attempt": claim["attempt"], "lease_token": claim["lease_token"]}
            running[job_id] = (attempt, float(claim["spec"]["optimizer"]["lr"]))
        for epoch in range(EPOCHS):
            for job_id, (attempt, lr) in list(running.items()):
                accuracy = validation_accuracy(lr, epoch, self.rng)
                body = {**attempt, "metrics": epoch_metrics(epoch, accuracy), "checkpoint": None}
                taken = way()
                with remembering(taken == "after"):
                    started = time.perf_counter()
                    answer = self.client.post(
                        f"/internal/v1/jobs/{job_id}/epochs", json=body, headers=self.worker
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                answer.raise_for_status()
                if timings is not None:
                    timings.posts[taken].append(elapsed)
                if answer.json()["pruned"]:
                    del running[job_id]
        for job_id, (attempt, _) in running.items():
            self.client.post(
                f"/internal/v1/jobs/{job_id}/finish",
                json={**attempt, "status": "succeeded", "error": None},
                headers=self.worker,
            ).raise_for_status()

    def plain_job_posts(self, jobs: int) -> list[float]:
        """The epoch posts of jobs outside any study, in ms: what every epoch post costs
        before a pruner is asked."""
        timings = []
        for _ in range(jobs):
            body = {"epochs": EPOCHS, "data": {"train_subset": 4000, "validation": 2000}}
            created = self.client.post("/v1/jobs", json=body, headers=self.tenant)
            job_id = created.raise_for_status().json()["id"]
            self.played.add(job_id)
            claim = self.client.post(
                f"/internal/v1/jobs/{job_id}/claim", json={"worker": "bench"}, headers=self.worker
            ).json()
            attempt = {"attempt": claim["attempt"], "lease_token": claim["lease_token"]}
            for epoch in range(EPOCHS):
                post = {**attempt, "metrics": epoch_metrics(epoch, 0.5), "checkpoint": None}
                started = time.perf_counter()
                answer = self.client.post(
                    f"/internal/v1/jobs/{job_id}/epochs", json=post, headers=self.worker
                )
                timings.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
            self.client.post(
                f"/internal/v1/jobs/{job_id}/finish",
                json={**attempt, "status": "succeeded", "error": None},
                headers=self.worker,
            ).raise_for_status()
        return timings

    def ask_and_queue(self, remember: bool) -> float:
        """One scheduler decision, timed: read the study's trials, ask the sampler (as
        scheduler._next_search_trial does). The trial is then stored and queued, untimed."""
        with Session(self.engine, expire_on_commit=False) as session, remembering(remember):
            study = session.get(Study, self.study_id)
            assert study is not None
            spec = study.parsed_spec()
            started = time.perf_counter()
            views = MEMORY.trial_views(session, study)
            search = [view for view in views if view.is_search]
            warm = [TrialRecord.from_json(stored) for stored in study.warm_trials]
            records = optuna_records(spec, search)
            asked: Asked = MEMORY.ask(study.id, spec, study.sampler_state, records, warm)
            elapsed = (time.perf_counter() - started) * 1000
            base = spec.base.model_dump(mode="json")
            job_spec, analysis = admit_trial(base, asked.params, self.settings)
            stored = add_trial_job(
                session,
                study,
                asked.number,
                asked.params,
                job_spec,
                analysis,
                self.settings.max_concurrent_jobs,
                system_attrs=asked.system_attrs,
                sampler_state=asked.sampler_state,
            )
            assert stored is not None, "the bench is the only scheduler of its study"
            dispatch(session, self.jobs, stored[1].id)
        return elapsed

    def measure(self) -> Timings:
        """ROUNDS rounds: 2 x ASKS asks, alternating the ways, then those trials played,
        their epoch posts alternating too."""
        timings = Timings()
        turn = iter(range(10**9))
        for _ in range(ROUNDS):
            for index in range(2 * ASKS):
                way = "before" if index % 2 == 0 else "after"
                timings.asks[way].append(self.ask_and_queue(remember=way == "after"))
            self.play_sent(lambda: "before" if next(turn) % 2 == 0 else "after", timings)
        return timings


@contextmanager
def scaling_run(max_trials: int) -> Iterator[ScalingRun]:
    with (
        fresh_database(POSTGRES_ADMIN, "bench_scaling") as database_url,
        tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch,
    ):
        folder = Path(scratch)
        settings = Settings(
            database_url=database_url,
            broker_url="memory://",
            broker_folder=folder / "broker",
            data_dir=folder / "data",
            artifact_dir=folder / "artifacts",
            worker_dir=folder / "worker",
            worker_token=WORKER_TOKEN,
            max_trials=max_trials,
            max_concurrent_jobs=max_trials,
        )
        engine = make_engine(database_url)
        SQLModel.metadata.create_all(engine)
        MEMORY.forget()
        try:
            yield ScalingRun(engine, settings, max_trials)
        finally:
            MEMORY.forget()
            engine.dispose()


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def run_scaling() -> bool:
    """Prints the scaling table; whether the targets at the largest size were met."""
    print(
        f"study scaling: TPE and ASHA, {EPOCHS} epochs a trial, PostgreSQL, the API in process; "
        f"at each size {ASKS * ROUNDS} asks and their trials' epoch posts each way, "
        f"alternating; load average {load()}",
        flush=True,
    )
    header = f"{'trials':>6}  {'epoch post p50 ms':>20}  {'posts':>9}  {'scheduler ask p50 ms':>22}"
    print(header)
    print(f"{'':>6}  {'before':>9} {'after':>10}  {'each way':>9}  {'before':>10} {'after':>11}")
    results = {}
    started = time.perf_counter()
    with scaling_run(max_trials=max(SIZES) + 2 * ASKS * ROUNDS * len(SIZES) + 2 * ASKS) as run:
        for size in SIZES:
            trials = run.grow_to(size)
            timings = run.measure()
            post = {way: statistics.median(ms) for way, ms in timings.posts.items()}
            ask = {way: statistics.median(ms) for way, ms in timings.asks.items()}
            results[size] = (post, ask)
            count = min(len(ms) for ms in timings.posts.values())
            print(
                f"{trials:>6}  {post['before']:>9.1f} {post['after']:>10.1f}  {count:>9}  "
                f"{ask['before']:>10.1f} {ask['after']:>11.1f}",
                flush=True,
            )
        plain = statistics.median(run.plain_job_posts(jobs=5))
    print(f"an epoch post of a job outside any study, for comparison: p50 {plain:.1f} ms")
    post, ask = results[max(SIZES)]
    met = post["after"] < POST_P50_TARGET_MS and ask["after"] < ASK_TARGET_MS
    print(
        f"targets at {max(SIZES)} trials (epoch post p50 < {POST_P50_TARGET_MS:.0f} ms, "
        f"ask < {ASK_TARGET_MS:.0f} ms): " + ("met" if met else "MISSED")
    )
    print(f"scaling took {time.perf_counter() - started:.0f} s; load average {load()}")
    return met
