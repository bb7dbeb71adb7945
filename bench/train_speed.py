"""make bench-train: the same MNIST job three ways, in one run, on this machine.

(a) the textbook loop: torchvision's MNIST with ToTensor and Normalize through a
    DataLoader, batch 128, SGD, an evaluation after each epoch;
(b) Tunelab's trainer, called directly;
(c) the same job through the whole service: API, broker, worker, metrics posts, on a
    worker that has already run one short job, as a worker in service has.

All three share the model, its initial weights, the data order and the schedule, so
their accuracies must agree: speed may not come from doing less work.

End to end, the job's time from running to succeeded (the API's own timestamps: setup,
every epoch, its checkpoints and uploads, the finish) is set against the textbook's epochs
with their evaluations.

`--device cuda` (or `auto`, the default, where there is one) runs everything on the GPU;
`--device cpu` keeps everything on the CPU, the service's worker included.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms

from bench.collecting_reporter import CollectingReporter
from bench.embedded import embedded_stack
from shared.checks import admit
from shared.settings import Settings
from shared.spec import JobSpec
from testbed.stack import wait_until
from worker.mnist_files import prepare_mnist
from worker.training.data import MNIST_MEAN, MNIST_STD, load_mnist
from worker.training.device import Hardware, mixed_precision
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


def pick_device(asked: str) -> torch.device:
    if asked == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if asked == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here")
    return torch.device(asked)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def textbook(spec: JobSpec, data_dir: Path, device: torch.device) -> list[dict[str, float]]:
    """The loop every MNIST tutorial writes, each batch moved to the device as it comes."""
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
    model = build_model(spec.model.layers or [], spec.model.dropout).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr, momentum=0.9)
    # The same one-cycle schedule the spec asks for, stepped per batch.
    schedule = LearningRateController(optimizer, spec, len(train_set))
    rows = []
    for _epoch in range(spec.epochs):
        started = time.perf_counter()
        model.train()
        for cpu_images, cpu_labels in train_loader:
            images, labels = cpu_images.to(device), cpu_labels.to(device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            schedule.after_batch()
        synchronize(device)
        train_seconds = time.perf_counter() - started
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                predicted = model(images.to(device)).argmax(dim=1).cpu()
                correct += int((predicted == labels).sum())
        rows.append(
            {
                "images_per_second": len(train_set) / train_seconds,
                "epoch_seconds": time.perf_counter() - started,
                "test_accuracy": correct / len(test_set),
            }
        )
    return rows


def trainer(spec: JobSpec, data_dir: Path, hardware: Hardware) -> list[dict[str, float]]:
    collect = CollectingReporter()
    data = load_mnist(data_dir, hardware.device)
    result: TrainingResult = train(spec, data, collect, hardware=hardware)
    assert result.epochs_completed == spec.epochs
    return collect.rows


WARM_UP_JOB = {"name": "warm-up", "epochs": 1, "data": {"train_subset": 5000, "test_subset": 1000}}


def run_job(client: httpx.Client, body: dict[str, object]) -> dict[str, object]:
    """Submits a job and waits for it to succeed, polling as a client would; the job."""
    job_id: str = client.post("/v1/jobs", json=body).json()["id"]

    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    # A client polling every two seconds, as the README's would.
    job = wait_until(finished, 1800, f"the job {body['name']}", interval=2.0)
    if job["status"] != "succeeded":
        raise RuntimeError(f"service job ended {job['status']}: {job['error']}")
    return job


@dataclass
class ServiceRun:
    rows: list[dict[str, float]]
    # Submitted to seen succeeded by a client polling every 2 s.
    wall: float
    # The API's started_at to finished_at: claimed to finished.
    running: float


def seconds_between(job: dict[str, object], start: str, end: str) -> float:
    started = datetime.fromisoformat(str(job[start]))
    return (datetime.fromisoformat(str(job[end])) - started).total_seconds()


def service(spec: JobSpec, data_dir: Path, device: torch.device) -> ServiceRun:
    """The embedded default's processes, started for this run and stopped after it."""
    # The default heartbeat, not the tests' fast one.
    heartbeat = str(Settings().heartbeat_seconds)
    # A worker trains on the device it finds: on the CPU here only if it sees no GPU.
    env = {"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}
    with embedded_stack(data_dir, timeout=10, env=env, heartbeat_seconds=heartbeat) as (
        client,
        _stack,
    ):
        # A worker in service is a long-lived process that has trained before: one short job
        # first loads MNIST into it and warms PyTorch up, untimed.
        run_job(client, WARM_UP_JOB)
        submitted = time.perf_counter()
        job = run_job(client, spec.model_dump(mode="json"))
        wall = time.perf_counter() - submitted
        rows = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
    return ServiceRun(rows, wall, seconds_between(job, "started_at", "finished_at"))


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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how quiet the machine was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Three epochs, so that the median leaves out the first one's warm-up.
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("var/data"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    prepare_mnist(args.data_dir)
    device = pick_device(args.device)
    hardware = Hardware(device, mixed_precision(device))
    spec = job_spec(args.epochs)
    print(
        f"{args.epochs} epochs of the baseline on full MNIST, batch {spec.batch_size}, "
        f"on {hardware}, {torch.get_num_threads()} threads; medians over epochs; "
        f"load average {load_average()}",
        flush=True,
    )

    textbook_rows = textbook(spec, args.data_dir, device)
    a = summary("(a) textbook DataLoader loop", textbook_rows)
    first_b = trainer(spec, args.data_dir, hardware)
    run = service(spec, args.data_dir, device)
    # (b) runs before and after (c), so a drift in the machine's speed hits both alike.
    b = summary(
        "(b) Tunelab trainer, before and after (c)",
        first_b + trainer(spec, args.data_dir, hardware),
    )
    c = summary("(c) through the service", run.rows)
    print(f"(c) submit to succeeded: {run.wall:.1f} s for {args.epochs} epochs")
    # End to end: everything the job did against the textbook's epochs and evaluations.
    textbook_total = sum(row["epoch_seconds"] for row in textbook_rows)
    epochs_total = sum(row["epoch_seconds"] for row in run.rows)
    print(
        f"(c) running to succeeded {run.running:.1f} s: its epochs {epochs_total:.1f} s, "
        f"outside them {run.running - epochs_total:.1f} s; the textbook's epochs with "
        f"evaluation {textbook_total:.1f} s"
    )
    print(
        f"b/a = {b['speed'] / a['speed']:.2f}   c/b = {c['speed'] / b['speed']:.2f}   "
        f"end to end a/c = {textbook_total / run.running:.2f}   "
        f"|accuracy a - b| = {abs(a['accuracy'] - b['accuracy']) * 100:.2f} points"
    )
    print(f"load average {load_average()}")
    if abs(a["accuracy"] - b["accuracy"]) > ACCURACY_AGREEMENT:
        print("accuracies disagree by more than 0.2 points", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
