"""The job client commands on the real stack: `python -m cli.main …` as a user runs it,
against uvicorn, a Celery worker training real jobs, PostgreSQL and Redis."""

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.idx import read_idx
from testbed.stack import Stack, wait_until
from worker.mnist_files import TEST_IMAGES, TEST_LABELS, raw_dir

pytestmark = pytest.mark.integration

SMALL = {
    "layers": [
        {"type": "conv", "out_channels": 8, "kernel_size": 5, "stride": 2, "batch_norm": True},
        {"type": "maxpool", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ]
}
TEST_SUBSET = 200
SPEC = {
    "name": "client-a",
    "model": SMALL,
    "epochs": 2,
    "batch_size": 16,
    "data": {"train_subset": 1024, "test_subset": TEST_SUBSET},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "constant"},
}
# Deep and linear, at an lr of 10: the loss overflows to nan within the first epoch.
DIVERGING = {
    **SPEC,
    "name": "client-diverges",
    "model": {
        "layers": [
            {"type": "flatten"},
            *[{"type": "linear", "out_features": 64} for _ in range(3)],
            {"type": "linear", "out_features": 10},
        ]
    },
    "epochs": 1,
    "data": {"train_subset": 256, "test_subset": 100},
    "optimizer": {"name": "sgd", "lr": 10.0, "momentum": 0.99},
}


LR_RANGE_TEST = {
    **SPEC,
    "name": "client-lr",
    "kind": "lr_range_test",
    "lr_range_test": {"start_lr": 1e-4, "end_lr": 1.0, "steps": 40},
}
# Long enough to be running still when the test cancels it.
LONG = {**SPEC, "name": "client-long", "epochs": 100, "data": {"train_subset": 2000}}


def tunelab(
    stack: Stack, key: str, *args: str, timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return stack.client_command(key, *args, timeout=timeout, stdin=stdin)


def submitted(stack: Stack, key: str, spec: dict[str, Any], *args: str) -> str:
    result = tunelab(stack, key, "submit", "-", *args, stdin=json.dumps(spec))
    assert result.returncode == 0, result.stderr + stack.logs()
    return result.stdout.strip()


def queued(stack: Stack, key: str, spec: dict[str, Any]) -> str:
    with stack.client(key) as client:
        answer = client.post("/v1/jobs", json=spec)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def job_of(stack: Stack, key: str, job_id: str) -> dict[str, Any]:
    with stack.client(key) as client:
        answer = client.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def mnist_test_pngs(stack: Stack, folder: Path, count: int) -> tuple[list[Path], list[int]]:
    """The first `count` test images of the stack's MNIST files, as 28x28 grayscale PNGs."""
    images_dir = raw_dir(stack.workdir / "data")
    _, pixels = read_idx((images_dir / TEST_IMAGES).read_bytes())
    _, labels = read_idx((images_dir / TEST_LABELS).read_bytes())
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"test-{index:03d}.png"
        Image.frombytes("L", (28, 28), bytes(pixels[index * 784 : (index + 1) * 784])).save(path)
        paths.append(path)
    return paths, list(labels[:count])


def test_the_job_commands(production_stack: Stack, tmp_path: Path):
    """One stack for the whole session, as a user has it: the worker trains the next jobs
    while the commands read the ones already done."""
    stack = production_stack
    key = stack.create_key()
    job_a = submit_and_watch(stack, key, tmp_path)
    job_b = submitted(stack, key, {**SPEC, "name": "client-b", "seed": 3, "epochs": 1})
    failing = queued(stack, key, DIVERGING)
    finder = queued(stack, key, LR_RANGE_TEST)
    long = queued(stack, key, LONG)

    watched = tunelab(stack, key, "watch", job_b)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[0].startswith("epoch 0 (1 of 1): train_loss")
    assert watched.stdout.splitlines()[-1].startswith(f"job {job_b} succeeded")

    list_and_show(stack, key, job_a)
    download(stack, key, tmp_path, job_a, job_b)
    plot_and_compare(stack, key, tmp_path, job_a, job_b, finder)
    predict(stack, key, tmp_path, job_a)

    failed = tunelab(stack, key, "watch", failing)
    assert failed.returncode == 1, failed.stderr + stack.logs()
    assert failed.stdout.splitlines()[-1].startswith(f"job {failing} failed")
    assert "diverged" in failed.stdout

    cancel_while_watched(stack, key, long)

    deleted = tunelab(stack, key, "delete", job_b)
    assert (deleted.returncode, deleted.stdout) == (0, f"job {job_b} deleted\n")
    gone = tunelab(stack, key, "show", job_b)
    assert gone.returncode == 1
    assert gone.stderr.startswith("tunelab: Job not found: ")
    assert len(gone.stderr.strip().splitlines()) == 1


def submit_and_watch(stack: Stack, key: str, tmp_path: Path) -> str:
    (tmp_path / "a.json").write_text(json.dumps(SPEC))
    watched = tunelab(
        stack, key, "submit", str(tmp_path / "a.json"), "--tag", "itest", "--tag", "a", "--watch"
    )
    assert watched.returncode == 0, watched.stderr + stack.logs()
    # Only the id on stdout, so `JOB=$(tunelab submit spec.json --watch)` works.
    job_a = watched.stdout.strip()
    assert job_a.startswith("job_") and "\n" not in job_a
    lines = watched.stderr.splitlines()
    assert [line.split(":")[0] for line in lines if "train_loss" in line] == [
        "epoch 0 (1 of 2)",
        "epoch 1 (2 of 2)",
    ]
    # Progress lines only come while an epoch outlasts a heartbeat, which these tiny epochs
    # may not: the long job's watch below checks them.
    assert lines[-1].startswith(f"job {job_a} succeeded: best test_accuracy")
    return job_a


def list_and_show(stack: Stack, key: str, job_a: str) -> None:
    listed = tunelab(stack, key, "jobs", "--tag", "itest")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[2:] if line.strip()]
    assert [row[:3] for row in rows] == [[job_a, "client-a", "succeeded"]]
    assert "itest, a" in listed.stdout

    shown = tunelab(stack, key, "show", job_a, "--json")
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["id"], job["status"], job["tags"]) == (job_a, "succeeded", ["itest", "a"])
    text = tunelab(stack, key, "show", job_a).stdout
    assert text.splitlines()[0].split() == ["job", job_a, "client-a", "succeeded"]
    best = job["best"]
    assert f"epoch {best['epoch']}: test_accuracy {best['test_accuracy']:.4f}" in text


def download(stack: Stack, key: str, tmp_path: Path, job_a: str, job_b: str) -> None:
    job = job_of(stack, key, job_a)
    downloaded = tunelab(stack, key, "download", job_a, "--best", "-o", str(tmp_path))
    assert downloaded.returncode == 0, downloaded.stderr
    path = Path(downloaded.stdout.strip())
    [record] = [c for c in job["checkpoints"] if c["epoch"] == job["best"]["epoch"]]
    assert path == tmp_path / f"{job_a}-{record['name']}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]

    # A stored file that no longer matches its recorded SHA-256 is refused and not kept.
    [b_checkpoint] = job_of(stack, key, job_b)["checkpoints"]
    stored = stack.workdir / "artifacts" / b_checkpoint["path"]
    payload = stored.read_bytes()
    stored.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    refused = tunelab(stack, key, "download", job_b, "-o", str(tmp_path / "b.pt"))
    assert refused.returncode == 1
    assert "does not match its SHA-256" in refused.stderr
    assert not (tmp_path / "b.pt").exists()


def colours(path: Path) -> int:
    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def plot_and_compare(
    stack: Stack, key: str, tmp_path: Path, job_a: str, job_b: str, finder: str
) -> None:
    plotted = tunelab(stack, key, "plot", job_a, job_b, "-o", str(tmp_path / "curves.png"))
    assert plotted.returncode == 0, plotted.stderr
    with Image.open(tmp_path / "curves.png") as image:
        rgb = image.convert("RGB")
    assert rgb.size == (1500, 400)
    assert colours(tmp_path / "curves.png") > 20
    # Three panels, each drawn: no two thirds of the image are alike.
    thirds = {rgb.crop((x, 0, x + 500, 400)).tobytes() for x in (0, 500, 1000)}
    assert len(thirds) == 3

    compared = tunelab(stack, key, "compare", job_a, job_b)
    assert compared.returncode == 0, compared.stderr
    rows = [line.split() for line in compared.stdout.splitlines()]
    assert ["seed", "0", "3"] in rows and ["epochs", "2", "1"] in rows
    assert ["tags", '["itest","a"]', "[]"] in rows
    assert not any(row and row[0] in {"optimizer.lr", "batch_size"} for row in rows)

    wait_until(lambda: job_of(stack, key, finder)["status"] == "succeeded", 120, "the LR test")
    plotted = tunelab(stack, key, "plot", finder, "-o", str(tmp_path / "lr.png"))
    assert plotted.returncode == 0, plotted.stderr
    with Image.open(tmp_path / "lr.png") as image:
        assert image.size == (500, 400)
    assert colours(tmp_path / "lr.png") > 20


def predict(stack: Stack, key: str, tmp_path: Path, job_a: str) -> None:
    """The test images the job measured, rendered as PNGs, give the accuracy it measured."""
    best = job_of(stack, key, job_a)["best"]
    pngs, labels = mnist_test_pngs(stack, tmp_path / "pngs", TEST_SUBSET)
    cache = tmp_path / "cache"
    predicted = tunelab(stack, key, "predict", job_a, *map(str, pngs), "--cache-dir", str(cache))
    assert predicted.returncode == 0, predicted.stderr
    answers = [line.split("\t") for line in predicted.stdout.splitlines()]
    assert [answer[0] for answer in answers] == [str(png) for png in pngs]
    assert all(0.1 <= float(answer[2]) <= 1.0 for answer in answers)
    correct = sum(int(answer[1]) == label for answer, label in zip(answers, labels, strict=True))
    assert correct / len(labels) == pytest.approx(best["test_accuracy"])
    assert len(list((cache / job_a).iterdir())) == 1


def cancel_while_watched(stack: Stack, key: str, long: str) -> None:
    def epochs_done() -> int:
        job = job_of(stack, key, long)
        assert job["status"] == "running" or job["status"] == "queued", job["status"]
        return int(job["progress"]["epochs_completed"])

    wait_until(lambda: epochs_done() >= 1, 120, "the long job's first epoch")
    with stack.running_client_command(key, "watch", long) as watcher:
        # An epoch begun and ended while the watch follows it: it saw the epoch's progress.
        seen = epochs_done()
        wait_until(lambda: epochs_done() >= seen + 2, 120, "two more epochs")
        refused = tunelab(stack, key, "delete", long)
        assert refused.returncode == 1
        assert refused.stderr.startswith("tunelab: Job cannot be deleted: ")
        cancelled = tunelab(stack, key, "cancel", long)
        assert (cancelled.returncode, cancelled.stdout) == (0, f"job {long} cancelled\n")
        out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 3, err
    # Every epoch from the first, each once, though the watch began later.
    epochs = [line.split(" (")[0] for line in out.splitlines() if "train_loss" in line]
    assert epochs[:2] == ["epoch 0", "epoch 1"] and len(epochs) == len(set(epochs))
    assert out.splitlines()[-1].startswith(f"job {long} cancelled")
    # Not a terminal: progress as plain lines on stderr, never a bar.
    assert f"job {long} running" in err
    assert any(line.startswith("epoch ") and ": batch " in line for line in err.splitlines())
    assert "\x1b[" not in out + err

    again = tunelab(stack, key, "cancel", long)
    assert again.returncode == 1
    assert again.stderr.startswith("tunelab: Job cannot be cancelled: ")
