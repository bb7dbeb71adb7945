"""make bench-presets: trains each preset's recommended job on full MNIST, on this
machine's CPU, and records when it first reaches 99.4% and whether it stays there.

Results go to var/bench/presets/NAME.json; docs/presets.md is rebuilt from all of them.
"""

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch

from bench.collecting_reporter import CollectingReporter
from shared.analysis import analyze
from shared.checks import admit
from shared.messages import EpochMetrics
from shared.presets import PRESETS
from shared.settings import Settings
from shared.spec import JobSpec
from worker.mnist_files import prepare_mnist
from worker.training.data import load_mnist
from worker.training.device import detect_hardware
from worker.training.loop import train

TARGET = 0.994
RESULTS = Path("var/bench/presets")
TABLE = Path("docs/presets.md")


def print_epoch(name: str, metrics: EpochMetrics) -> None:
    print(
        f"{name} epoch {metrics.epoch:2d}: test accuracy {metrics.test_accuracy:.4f} "
        f"({metrics.epoch_seconds:.1f} s)",
        flush=True,
    )


def measure(name: str, data_dir: Path) -> dict[str, object]:
    preset = PRESETS[name]
    spec = admit(JobSpec.model_validate(preset.job()), Settings())[0]
    collect = CollectingReporter(on_epoch=partial(print_epoch, name))
    started = time.perf_counter()
    hardware = detect_hardware()
    data = load_mnist(data_dir, hardware.device)
    train(spec, data, collect, hardware=hardware)
    accuracies = [row["test_accuracy"] for row in collect.rows]
    reached = next((i for i, accuracy in enumerate(accuracies) if accuracy >= TARGET), None)
    return {
        "name": name,
        "parameters": analyze(list(preset.layers)).parameters,
        "job": preset.job(),
        "accuracies": accuracies,
        "first_epoch_at_target": reached,
        "last_three_at_target": all(a >= TARGET for a in accuracies[-3:]),
        "best": max(accuracies),
        "final": accuracies[-1],
        "seconds_per_epoch": (time.perf_counter() - started) / len(accuracies),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
    }


def write_table() -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    results.sort(key=lambda result: -result["parameters"])
    lines = [
        "# Presets, measured",
        "",
        "Each preset's recommended job (`GET /v1/presets`, or `bench/presets.py`) trained on",
        'full MNIST on a CPU, with its fixed seed. Epochs count from 0; "first ≥ 99.4%" is the',
        'first epoch whose test accuracy reached 99.4%, and "last 3 ≥ 99.4%" whether the last',
        "three epochs all stayed there. s/epoch is wall time with the evaluation, taken",
        "while the machine may have been busy with other work: `make bench-train` measures",
        "speed properly. Rebuild with `make bench-presets`.",
        "",
        "| preset | parameters | first ≥ 99.4% | last 3 ≥ 99.4% | best | final | s/epoch |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        first = "never" if r["first_epoch_at_target"] is None else str(r["first_epoch_at_target"])
        lines.append(
            f"| `{r['name']}` | {r['parameters']:,} | {first} | "
            f"{'yes' if r['last_three_at_target'] else 'no'} | {r['best'] * 100:.2f}% | "
            f"{r['final'] * 100:.2f}% | {r['seconds_per_epoch']:.0f} |"
        )
    lines += ["", "Test accuracy per epoch:", ""]
    for r in results:
        per_epoch = ", ".join(f"{a * 100:.2f}" for a in r["accuracies"])
        lines.append(f"- `{r['name']}`: {per_epoch}")
    lines += ["", f"Measured on: {results[0]['machine'] if results else 'n/a'}.", ""]
    TABLE.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="preset names (default: all but baseline)")
    parser.add_argument("--data-dir", type=Path, default=Path("var/data"))
    args = parser.parse_args()
    names = args.presets or [name for name in PRESETS if name != "baseline"]
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    prepare_mnist(args.data_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        result = measure(name, args.data_dir)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
        write_table()
        print(
            f"{name}: first at 99.4% in epoch {result['first_epoch_at_target']}, "
            f"last three there: {result['last_three_at_target']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
