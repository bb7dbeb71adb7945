"""The training step in CUDA graphs: when a job's steps are captured, and the step that
replays them.

A small network on a GPU is launch-bound: its hundred-odd kernels per step each take less
time on the device than the host takes to launch them. A CUDA graph records the step's
kernels once and replays them with one launch. The captured part is everything a full batch
does up to its gradients: gathering its images, scaling and augmenting them, the forward
pass, the loss, the backward pass and the epoch's sums. The optimizer's step stays eager (a
few multi-tensor kernels), so that a schedule moves the lr as it always did.

A graph replays fixed shapes, so each batch size gets a graph of its own, captured after a
few eager warm-up steps of that size (real training steps, on the capture's stream); the
last, shorter batch of an epoch runs eagerly. `plan_capture` decides what is captured, as a
pure function of the job and the hardware; wherever it decides against, or a capture fails,
the step runs eagerly and the log says why.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from worker.training.steps import EagerStep

log = logging.getLogger(__name__)

# Eager steps of a batch size before its capture: cuDNN, cuBLAS and the allocator set up
# what they set up lazily, outside the graph.
WARMUP_STEPS = 3
# A batch size is captured only if the job runs at least this many full batches of it after
# the warm-up: a capture costs a device synchronisation and a few milliseconds, and holds
# its batch's activations in memory of its own.
MIN_REPLAYS = 20
# Graphs a job keeps at most (one per batch size): a schedule of more sizes captures those
# with the most batches.
MAX_GRAPHS = 4


@dataclass(frozen=True)
class CapturePlan:
    """The batch sizes whose full batches replay a graph, and what runs eagerly, and why."""

    sizes: frozenset[int]
    reasons: tuple[str, ...]

    def captures(self, batch_size: int) -> bool:
        return batch_size in self.sizes

    def describe(self) -> str:
        captured = ", ".join(str(size) for size in sorted(self.sizes))
        said = f"CUDA graphs for batch size {captured}" if captured else "eager steps"
        return "; ".join([said, *self.reasons])


def plan_capture(
    *,
    device_type: str,
    graphs_available: bool,
    deterministic: bool,
    batch_sizes: Sequence[int],
    train_images: int,
) -> CapturePlan:
    """What a job captures: `batch_sizes` holds the batch size of each epoch it has still to
    train, on `train_images` images per epoch."""

    def eager(reason: str) -> CapturePlan:
        return CapturePlan(frozenset(), (reason,))

    if device_type != "cuda":
        return eager(f"CUDA graphs need a CUDA device, not {device_type}")
    if not graphs_available:
        return eager("CUDA graphs are turned off (TUNELAB_CUDA_GRAPHS) or not in this PyTorch")
    if deterministic:
        # Its reproducibility is the eager kernels' under deterministic algorithms, the path
        # that was checked; a deterministic job trains as it always did.
        return eager("the job asks for deterministic training, which runs eagerly")
    full_batches: dict[int, int] = {}
    for size in batch_sizes:
        full_batches[size] = full_batches.get(size, 0) + train_images // size
    reasons = []
    worth = []
    for size, count in full_batches.items():
        if count < WARMUP_STEPS + MIN_REPLAYS:
            reasons.append(
                f"batch size {size}: {count} full batches in the job, too few to pay for a capture"
            )
        else:
            worth.append(size)
    # The most batches first; a tie goes to the larger size, whose graph saves more.
    worth.sort(key=lambda size: (full_batches[size], size), reverse=True)
    for size in worth[MAX_GRAPHS:]:
        reasons.append(f"batch size {size}: eager, the job keeps at most {MAX_GRAPHS} graphs")
    sizes = frozenset(worth[:MAX_GRAPHS])
    partial = sorted(
        {
            train_images % size
            for size in set(batch_sizes)
            if size in sizes and train_images % size > 1
        }
    )
    if partial:
        remainder = " or ".join(str(images) for images in partial)
        reasons.append(f"the last batch of each epoch ({remainder} images) runs eagerly")
    return CapturePlan(sizes, tuple(reasons))


Action = Literal["eager", "warm_up", "capture", "replay"]


def next_action(
    plan: CapturePlan, size: int, *, warmed: int, captured: bool, failed: bool, drawn: bool
) -> Action:
    """What the step does with a batch of `size` images: `warmed` eager warm-up steps of that
    size ran so far, `captured` says its graph exists, `failed` that its capture failed, and
    `drawn` whether the batch's augmentation draws came with it (or it needs none)."""
    if not plan.captures(size) or failed or not drawn:
        return "eager"
    if captured:
        return "replay"
    return "warm_up" if warmed < WARMUP_STEPS else "capture"


class _Graph:
    """One batch size's captured step: its static inputs, outputs and gradients."""

    def __init__(self, size: int, index: torch.Tensor, draws: torch.Tensor | None) -> None:
        self.size = size
        self.graph = torch.cuda.CUDAGraph()
        self.index = index
        self.draws = draws
        self.grads: list[torch.Tensor | None] = []


class GraphedStep:
    """The job's step on a GPU: a graph's replay for the full batches of a captured size,
    the eager step (`eager`) for everything else."""

    def __init__(self, eager: EagerStep, plan: CapturePlan) -> None:
        self.eager = eager
        self.plan = plan
        self.params = [p for p in eager.model.parameters() if p.requires_grad]
        self.graphs: dict[int, _Graph] = {}
        self.warmed: dict[int, int] = {}
        # Sizes whose capture failed: eager from then on.
        self.failed: set[int] = set()
        self.stream = torch.cuda.Stream(eager.hardware.device)
        # The graph whose gradient tensors the parameters hold now, if any.
        self.bound: _Graph | None = None
        # Seconds spent capturing, for the epoch's timings.
        self.capture_seconds = 0.0

    def start_epoch(self) -> None:
        self.eager.start_epoch()

    def sums(self) -> tuple[float, int]:
        return self.eager.sums()

    def __call__(self, batch: torch.Tensor, draws: torch.Tensor | None = None) -> None:
        size = batch.shape[0]
        action = next_action(
            self.plan,
            size,
            warmed=self.warmed.get(size, 0),
            captured=size in self.graphs,
            failed=size in self.failed,
            # A graph takes its draws as an input: it cannot draw on the host mid-replay.
            drawn=draws is not None or self.eager.transform.augmenter is None,
        )
        if action == "eager":
            self._eager(batch, draws)
        elif action == "warm_up":
            self._warm_up(size, batch, draws)
        elif action == "capture":
            graph = self._capture(size, batch, draws)
            if graph is None:
                self._eager(batch, draws)
            else:
                self._replay(graph, batch, draws)
        else:
            self._replay(self.graphs[size], batch, draws)

    def _eager(self, batch: torch.Tensor, draws: torch.Tensor | None) -> None:
        self.eager(batch, draws)
        # Its zero_grad let go of any graph's gradient tensors.
        self.bound = None

    def _warm_up(self, size: int, batch: torch.Tensor, draws: torch.Tensor | None) -> None:
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            self._eager(batch, draws)
        current.wait_stream(self.stream)
        self.warmed[size] = self.warmed.get(size, 0) + 1

    def _captured_step(self, graph: _Graph) -> None:
        """What the graph records: the full batch at `graph.index` up to its gradients."""
        eager = self.eager
        labels = eager.labels[graph.index]
        images = eager.transform(eager.images[graph.index], train=True, draws=graph.draws)
        with eager.hardware.autocast(cache=False):
            logits = eager.model(images)
            loss = eager.loss_fn(logits.float(), labels)
        loss.backward()
        eager.add_to_sums(loss, logits, labels)

    def _capture(self, size: int, batch: torch.Tensor, draws: torch.Tensor | None) -> _Graph | None:
        began = time.perf_counter()
        graph = _Graph(size, batch.clone(), draws.clone() if draws is not None else None)
        # The gradients are allocated inside the capture, in the graph's memory, and each
        # replay writes them afresh.
        self.eager.optimizer.zero_grad(set_to_none=True)
        self.bound = None
        try:
            with torch.cuda.graph(graph.graph, stream=self.stream):
                self._captured_step(graph)
        except Exception as error:  # noqa: BLE001 - any failure means: train eagerly
            log.warning("batch size %d: capture failed (%s); its steps run eagerly", size, error)
            self.failed.add(size)
            self.eager.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            return None
        finally:
            self.capture_seconds += time.perf_counter() - began
        graph.grads = [p.grad for p in self.params]
        self.graphs[size] = graph
        log.info("batch size %d captured in a CUDA graph", size)
        return graph

    def _replay(self, graph: _Graph, batch: torch.Tensor, draws: torch.Tensor | None) -> None:
        graph.index.copy_(batch)
        if graph.draws is not None and draws is not None:
            graph.draws.copy_(draws)
        graph.graph.replay()
        if self.bound is not graph:
            for param, grad in zip(self.params, graph.grads, strict=True):
                param.grad = grad
            self.bound = graph
        self.eager.optimizer.step()


def build_step(eager: EagerStep, plan: CapturePlan) -> EagerStep | GraphedStep:
    """The step a job trains with: graphed if the plan captures anything."""
    return GraphedStep(eager, plan) if plan.sizes else eager
