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

Those are the `baseline` section. The others (`--sections`; on a GPU all run by default):
`trial`, where a study trial's epoch goes, part by part, eager and in CUDA graphs
(bench.epoch_parts); `bare`, compact-8k's training steps alone by batch size; `side`,
several trial processes on one device at once, as `tunelab worker --per-gpu` runs them, with
the memory each holds (bench.side_by_side).
"""

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms

from bench import epoch_parts, process_cpu, side_by_side
from bench.collecting_reporter import CollectingReporter
from bench.embedded import embedded_stack
from shared.checks import admit
from shared.settings import Settings
from shared.spec import JobSpec
from testbed.stack import wait_until
from worker.mnist_files import prepare_mnist
from worker.training.data import MNIST_MEAN, MNIST_STD, MnistTensors, load_mnist
from worker.training.device import Hardware, cuda_graphs_supported, mixed_precision
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


@dataclass
class TrainerRun:
    rows: list[dict[str, float]]
    # The whole train() call, setup and evaluations included.
    wall: float
    result: TrainingResult


def trainer(spec: JobSpec, data: MnistTensors, hardware: Hardware) -> TrainerRun:
    collect = CollectingReporter()
    began = time.perf_counter()
    result = train(spec, data, collect, hardware=hardware)
    wall = time.perf_counter() - began
    assert result.epochs_completed == spec.epochs
    return TrainerRun(collect.rows, wall, result)


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
    # The worker's log lines of the timed job, from its claim to its finish.
    log: list[str]
    # CPU seconds each process of the deployment (and this bench) used while the job ran.
    cpu: dict[str, float]
    # The worker's processes' resident memory once the job has ended.
    resident_mib: dict[str, float] = field(default_factory=dict)


LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def job_log(text: str, job_id: str) -> list[str]:
    """The worker's lines from the job's claim to its finish."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if f"job {job_id}: attempt" in line)
    last = max(i for i, line in enumerate(lines) if f"job {job_id}: attempt" in line)
    return [line for line in lines[first : last + 1] if LOG_TIME.search(line)]


def logged_at(line: str) -> datetime:
    found = LOG_TIME.search(line)
    assert found is not None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")


def where_the_job_went(run: ServiceRun) -> None:
    """The worker's view of the timed job, from its log: the time before its first epoch ended
    that was not the epoch, between epochs, and after the last until it finished."""
    lines = run.log
    epochs = [line for line in lines if ": epoch " in line and "test accuracy" in line]
    if not lines or not epochs:
        print("(c) the worker's log says nothing of the job's epochs")
        return
    start, end = logged_at(lines[0]), logged_at(lines[-1])
    ends = [logged_at(line) for line in epochs]
    seconds = [row["epoch_seconds"] for row in run.rows]
    before = (ends[0] - start).total_seconds() - seconds[0]
    between = sum(
        (later - earlier).total_seconds() - epoch
        for earlier, later, epoch in zip(ends, ends[1:], seconds[1:], strict=False)
    )
    after = (end - ends[-1]).total_seconds()
    print(
        f"(c) in the worker's log: claimed to finished {(end - start).total_seconds():.1f} s; "
        f"before the first epoch {before:.2f} s, between epochs {between:.2f} s, after the "
        f"last {after:.2f} s"
    )
    for line in epochs:
        print(f"    {line[line.index('epoch ') :]}")


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
        stack,
    ):
        # A worker in service is a long-lived process that has trained before: one short job
        # first loads MNIST into it and warms PyTorch up, untimed.
        run_job(client, WARM_UP_JOB)
        names = {os.getpid(): "this bench (polling every 2 s)", stack.api.popen.pid: "API"}
        worker = stack.workers[0].popen.pid
        names[worker] = "worker's main process"
        for pid in process_cpu.tree(worker)[1:]:
            names[pid] = "worker's training process"
        before = process_cpu.snapshot(list(names))
        submitted = time.perf_counter()
        job = run_job(client, spec.model_dump(mode="json"))
        wall = time.perf_counter() - submitted
        used = process_cpu.used_since(before)
        rows = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
        log = job_log(stack.workers[0].log(), str(job["id"]))
        memory = {
            names[pid]: process_cpu.resident_mib(pid)
            for pid in names
            if names[pid].startswith("worker")
        }
    cpu = {names[pid]: seconds for pid, seconds in used.items()}
    running = seconds_between(job, "started_at", "finished_at")
    return ServiceRun(rows, wall, running, log, cpu, resident_mib=memory)


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


def baseline(args: argparse.Namespace, hardware: Hardware) -> int:
    """The three ways, the end-to-end figures and the accuracies' agreement."""
    device = hardware.device
    spec = job_spec(args.epochs)
    print(
        f"{args.epochs} epochs of the baseline on full MNIST, batch {spec.batch_size}, "
        f"on {hardware}, {torch.get_num_threads()} threads; medians over epochs; "
        f"load average {load_average()}",
        flush=True,
    )
    textbook_rows = textbook(spec, args.data_dir, device)
    a = summary("(a) textbook DataLoader loop", textbook_rows)
    data = load_mnist(args.data_dir, device)
    first_b = trainer(spec, data, hardware)
    run = service(spec, args.data_dir, device)
    # (b) runs before and after (c), so a drift in the machine's speed hits both alike.
    second_b = trainer(spec, data, hardware)
    b = summary("(b) Tunelab trainer, before and after (c)", first_b.rows + second_b.rows)
    c = summary("(c) through the service", run.rows)
    print(f"(c) submit to succeeded: {run.wall:.1f} s for {args.epochs} epochs")
    # End to end: everything the job did against the textbook's epochs and evaluations.
    textbook_total = sum(row["epoch_seconds"] for row in textbook_rows)
    trainer_total = statistics.median([first_b.wall, second_b.wall])
    epochs_total = sum(row["epoch_seconds"] for row in run.rows)
    print(
        f"(c) running to succeeded {run.running:.1f} s: its epochs {epochs_total:.1f} s, "
        f"outside them {run.running - epochs_total:.1f} s; the textbook's epochs with "
        f"evaluation {textbook_total:.1f} s; (b)'s whole train() call {trainer_total:.1f} s"
    )
    where_the_job_went(run)
    print(
        "(c) CPU seconds while it ran: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu.items())
    )
    print(
        "(c) resident memory after it: "
        + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in run.resident_mib.items())
    )
    for number, times in enumerate(second_b.result.epoch_times):
        print(f"(b) epoch {number}: {times.describe()}")
    print(
        f"b/a = {b['speed'] / a['speed']:.2f}   c/b = {c['speed'] / b['speed']:.2f}   "
        f"end to end: a/b = {textbook_total / trainer_total:.2f}  "
        f"a/c = {textbook_total / run.running:.2f}   "
        f"|accuracy a - b| = {abs(a['accuracy'] - b['accuracy']) * 100:.2f} points"
    )
    print(f"load average {load_average()}", flush=True)
    if abs(a["accuracy"] - b["accuracy"]) > ACCURACY_AGREEMENT:
        print("accuracies disagree by more than 0.2 points", file=sys.stderr)
        return 1
    return 0


SECTIONS = ("baseline", "trial", "bare", "side")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Three epochs, so that the median leaves out the first one's warm-up.
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("var/data"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated, of {', '.join(SECTIONS)}; by default baseline and trial, and on "
        "a GPU all four",
    )
    parser.add_argument("--trial-epochs", type=int, default=3)
    parser.add_argument("--side-by-side", type=int, default=4, help="processes at once")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    prepare_mnist(args.data_dir)
    device = pick_device(args.device)
    hardware = Hardware(device, mixed_precision(device), cuda_graphs_supported(device))
    default = SECTIONS if device.type == "cuda" else ("baseline", "trial")
    sections = args.sections.split(",") if args.sections else list(default)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"no such sections: {', '.join(sorted(unknown))}")
    print(f"machine: {describe_machine(device)}", flush=True)
    status = 0
    if "baseline" in sections:
        status = baseline(args, hardware)
    if {"trial", "bare"} & set(sections):
        data = load_mnist(args.data_dir, device)
        if "trial" in sections:
            epoch_parts.trial(data, hardware, args.trial_epochs)
        if "bare" in sections:
            epoch_parts.bare_steps(data, hardware)
    if "side" in sections:
        side_by_side.side_by_side(args.side_by_side, args.data_dir, device.type, args.trial_epochs)
    print(f"load average {load_average()}")
    return status


def describe_machine(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0))
    said = f"{cores} cores, PyTorch {torch.__version__}, load average {load_average()}"
    if device.type == "cuda":
        said += f", {torch.cuda.get_device_name(device)}"
    return said


if __name__ == "__main__":
    sys.exit(main())
