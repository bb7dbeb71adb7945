"""make bench-train: the same MNIST job three ways, in one run, on this machine.

(a) the textbook loop: torchvision's MNIST with ToTensor and Normalize through a
    DataLoader, batch 128, SGD, an evaluation after each epoch;
(b) Tunelab's trainer, called directly;
(c) the same job through the whole service: API, broker, worker, metrics posts, on a
    worker that has already run one short job, as a worker in service has.

All three share the model, its initial weights, the data order and the schedule, so
their accuracies must agree: speed may not come from doing less work.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms

from bench.collecting_reporter import CollectingReporter
from bench.embedded import embedded_service
from shared.checks import admit
from shared.settings import Settings
from shared.spec import JobSpec
from testbed.stack import wait_until
from worker.mnist_files import prepare_mnist
from worker.training.data import MNIST_MEAN, MNIST_STD, load_mnist
from worker.training.device import detect_hardware
from worker.training.loop import TrainingResult, train
from worker.training.model import build_model
from worker.training.schedules import LearningRateController

ACCURACY_AGREEMENT = 0.002


def job_spec(epochs: int) -> JobSpec:
    """The benchmark's job, as the API stores it (its preset resolved into layers)."""
    submitted = JobSpec.model_validate({"name": "bench-train", "epochs": epochs, "seed": 1})
    return admit(submitted, Settings())[0]


class SameOrderAsTunelab(Sampler[int]):
    """The permutation Tunelab's trainer draws each epoch, so both loops see the same batches."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.count, generator=self.generator).tolist())


def textbook(spec: JobSpec, data_dir: Path) -> list[dict[str, float]]:
    """The loop every MNIST tutorial writes."""
    to_tensor = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )
    train_set = datasets.MNIST(str(data_dir), train=True, download=False, transform=to_tensor)
    test_set = datasets.MNIST(str(data_dir), train=False, download=False, transform=to_tensor)
    train_loader = DataLoader(
        train_set, batch_size=spec.batch_size, sampler=SameOrderAsTunelab(len(train_set), spec.seed)
    )
    test_loader = DataLoader(test_set, batch_size=1000)

    torch.manual_seed(spec.seed)
    model = build_model(spec.model.layers or [], spec.model.dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr, momentum=0.9)
    # The same one-cycle schedule the spec asks for, stepped per batch.
    schedule = LearningRateController(optimizer, spec, len(train_set))
    rows = []
    for _epoch in range(spec.epochs):
        started = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            schedule.after_batch()
        train_seconds = time.perf_counter() - started
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += int((model(images).argmax(dim=1) == labels).sum())
        rows.append(
            {
                "images_per_second": len(train_set) / train_seconds,
                "epoch_seconds": time.perf_counter() - started,
                "test_accuracy": correct / len(test_set),
            }
        )
    return rows


def trainer(spec: JobSpec, data_dir: Path) -> list[dict[str, float]]:
    collect = CollectingReporter()
    hardware = detect_hardware()
    data = load_mnist(data_dir, hardware.device)
    result: TrainingResult = train(spec, data, collect, hardware=hardware)
    assert result.epochs_completed == spec.epochs
    return collect.rows


WARM_UP_JOB = {"name": "warm-up", "epochs": 1, "data": {"train_subset": 5000, "test_subset": 1000}}


def run_job(client: httpx.Client, body: dict[str, object]) -> str:
    """Submits a job and waits for it to succeed, polling as a client would."""
    job_id: str = client.post("/v1/jobs", json=body).json()["id"]

    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    # A client polling every two seconds, as the README's would.
    job = wait_until(finished, 1800, f"the job {body['name']}", interval=2.0)
    if job["status"] != "succeeded":
        raise RuntimeError(f"service job ended {job['status']}: {job['error']}")
    return job_id


def service(spec: JobSpec, data_dir: Path) -> tuple[list[dict[str, float]], float]:
    """The embedded default's processes, started for this run and stopped after it."""
    # The default heartbeat, not the tests' fast one.
    heartbeat = str(Settings().heartbeat_seconds)
    with embedded_service(data_dir, timeout=10, heartbeat_seconds=heartbeat) as client:
        # A worker in service is a long-lived process that has trained before: one short job
        # first loads MNIST into it and warms PyTorch up, untimed.
        run_job(client, WARM_UP_JOB)
        submitted = time.perf_counter()
        job_id = run_job(client, spec.model_dump(mode="json"))
        wall = time.perf_counter() - submitted
        rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
    return rows, wall


def summary(name: str, rows: list[dict[str, float]]) -> dict[str, float]:
    speed = statistics.median(row["images_per_second"] for row in rows)
    epoch = statistics.median(row["epoch_seconds"] for row in rows)
    accuracy = rows[-1]["test_accuracy"]
    each = ", ".join(f"{row['images_per_second']:.0f}" for row in rows)
    print(
        f"{name:<34} {speed:>6.0f} img/s {epoch:>6.1f} s/epoch  test accuracy {accuracy:.4f}"
        f"  (img/s by epoch: {each})",
        flush=True,
    )
    return {"speed": speed, "epoch": epoch, "accuracy": accuracy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Three epochs, so that the median leaves out the first one's warm-up.
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("var/data"))
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    prepare_mnist(args.data_dir)
    spec = job_spec(args.epochs)
    print(
        f"{args.epochs} epochs of the baseline on full MNIST, batch {spec.batch_size}, "
        f"{torch.get_num_threads()} threads; medians over epochs",
        flush=True,
    )

    a = summary("(a) textbook DataLoader loop", textbook(spec, args.data_dir))
    first_b = trainer(spec, args.data_dir)
    service_rows, wall = service(spec, args.data_dir)
    # (b) runs before and after (c), so a drift in the machine's speed hits both alike.
    b = summary("(b) Tunelab trainer, before and after (c)", first_b + trainer(spec, args.data_dir))
    c = summary("(c) through the service", service_rows)
    print(f"(c) submit to succeeded: {wall:.1f} s for {args.epochs} epochs")
    print(
        f"b/a = {b['speed'] / a['speed']:.2f}   c/b = {c['speed'] / b['speed']:.2f}   "
        f"|accuracy a - b| = {abs(a['accuracy'] - b['accuracy']) * 100:.2f} points"
    )
    if abs(a["accuracy"] - b["accuracy"]) > ACCURACY_AGREEMENT:
        print("accuracies disagree by more than 0.2 points", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
