"""When a job's training step is captured in CUDA graphs, and when it falls back to eager
steps: the decision is a pure function of the job and the hardware, tested here on any
machine. The capture itself needs a GPU: TestOnCuda runs only where there is one."""

from pathlib import Path

import pytest
import torch

from shared.spec import AugmentSpec, JobSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU, CPU_FP32, small_job, small_layers
from worker.training.augment import BatchAugmenter
from worker.training.checkpoints import Checkpointing
from worker.training.data import InputTransform, MnistTensors, load_mnist
from worker.training.determinism import CUBLAS_WORKSPACE_CONFIG, DEFAULT_CUBLAS_WORKSPACE
from worker.training.device import Hardware, cuda_graphs_supported, detect_hardware
from worker.training.graphs import (
    MAX_GRAPHS,
    MIN_REPLAYS,
    WARMUP_STEPS,
    CapturePlan,
    next_action,
    plan_capture,
)
from worker.training.loop import train
from worker.training.steps import EpochDraws

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MNIST_TRAIN = 60_000


def plan(
    batch_sizes: list[int],
    train_images: int = MNIST_TRAIN,
    device_type: str = "cuda",
    graphs_available: bool = True,
    deterministic: bool = False,
) -> CapturePlan:
    return plan_capture(
        device_type=device_type,
        graphs_available=graphs_available,
        deterministic=deterministic,
        batch_sizes=batch_sizes,
        train_images=train_images,
    )


class TestPlanCapture:
    def test_full_batches_of_a_long_job_on_cuda_are_captured(self):
        decided = plan([128] * 3)
        assert decided.sizes == {128}
        assert decided.captures(128)
        # 60,000 = 468 x 128 + 96: the last batch has another shape.
        assert decided.reasons == ("the last batch of each epoch (96 images) runs eagerly",)

    def test_an_epoch_of_whole_batches_has_no_eager_remainder(self):
        assert plan([250] * 2).reasons == ()

    def test_a_last_batch_of_one_image_is_dropped_not_run(self):
        # 60,001 images: the one left over is dropped, as batches_per_epoch drops it.
        assert plan([250], train_images=MNIST_TRAIN + 1).reasons == ()

    @pytest.mark.parametrize("device_type", ["cpu", "mps"])
    def test_other_devices_train_eagerly(self, device_type):
        decided = plan([128] * 3, device_type=device_type)
        assert decided.sizes == frozenset()
        assert not decided.captures(128)
        assert decided.reasons == (f"CUDA graphs need a CUDA device, not {device_type}",)

    def test_graphs_turned_off_or_missing_train_eagerly(self):
        decided = plan([128] * 3, graphs_available=False)
        assert decided.sizes == frozenset()
        assert "turned off" in decided.reasons[0]

    def test_a_deterministic_job_trains_eagerly(self):
        decided = plan([128] * 3, deterministic=True)
        assert decided.sizes == frozenset()
        assert "deterministic" in decided.reasons[0]

    def test_a_batch_size_schedule_captures_each_size(self):
        decided = plan([64, 64, 256, 256, 256])
        assert decided.sizes == {64, 256}
        # 60,000 = 937 x 64 + 32 = 234 x 256 + 96.
        assert decided.reasons == ("the last batch of each epoch (32 or 96 images) runs eagerly",)

    def test_a_size_with_too_few_batches_is_not_worth_a_capture(self):
        few = WARMUP_STEPS + MIN_REPLAYS - 1
        decided = plan([128, 100], train_images=few * 100)
        assert decided.sizes == frozenset()
        assert decided.reasons[1] == (
            f"batch size 100: {few} full batches in the job, too few to pay for a capture"
        )

    def test_batches_are_counted_over_the_whole_job(self):
        enough = WARMUP_STEPS + MIN_REPLAYS
        # Half the batches an epoch, in each of two epochs: enough together.
        assert plan([100, 100], train_images=enough // 2 * 100 + 100).sizes == {100}

    def test_a_job_smaller_than_its_batch_trains_eagerly(self):
        decided = plan([256] * 5, train_images=200)
        assert decided.sizes == frozenset()
        assert "0 full batches" in decided.reasons[0]

    def test_at_most_max_graphs_sizes_those_with_the_most_batches(self):
        sizes = [32, 64, 128, 256, 512, 1024]
        decided = plan(sizes)
        assert len(decided.sizes) == MAX_GRAPHS
        # The smallest sizes have the most batches per epoch.
        assert decided.sizes == set(sizes[:MAX_GRAPHS])
        assert "batch size 512: eager, the job keeps at most 4 graphs" in decided.reasons
        assert "batch size 1024: eager, the job keeps at most 4 graphs" in decided.reasons

    def test_describe_names_what_is_captured_and_why_the_rest_is_not(self):
        assert plan([128]).describe() == (
            "CUDA graphs for batch size 128; the last batch of each epoch (96 images) runs eagerly"
        )
        assert plan([128], device_type="cpu").describe() == (
            "eager steps; CUDA graphs need a CUDA device, not cpu"
        )


class TestNextAction:
    CAPTURING = plan([128] * 3)

    def act(self, size: int = 128, **state: object) -> str:
        known = {"warmed": 0, "captured": False, "failed": False, "drawn": True}
        return next_action(self.CAPTURING, size, **{**known, **state})  # type: ignore[arg-type]

    def test_warm_up_steps_then_a_capture_then_replays(self):
        assert [self.act(warmed=n) for n in range(WARMUP_STEPS)] == ["warm_up"] * WARMUP_STEPS
        assert self.act(warmed=WARMUP_STEPS) == "capture"
        assert self.act(warmed=WARMUP_STEPS, captured=True) == "replay"

    def test_the_partial_last_batch_runs_eagerly(self):
        assert self.act(size=96, warmed=WARMUP_STEPS, captured=True) == "eager"

    def test_a_size_whose_capture_failed_runs_eagerly(self):
        assert self.act(warmed=WARMUP_STEPS, failed=True) == "eager"

    def test_a_batch_without_its_draws_runs_eagerly(self):
        assert self.act(warmed=WARMUP_STEPS, captured=True, drawn=False) == "eager"

    def test_nothing_is_captured_under_an_eager_plan(self):
        eager = plan([128], device_type="cpu")
        assert next_action(eager, 128, warmed=9, captured=False, failed=False, drawn=True) == (
            "eager"
        )


class TestHardware:
    def test_no_graphs_on_the_cpu(self):
        assert not cuda_graphs_supported(CPU)

    def test_detect_hardware_turns_graphs_off_when_told(self):
        assert not detect_hardware(cuda_graphs=False).graphs

    def test_autocast_without_its_cache(self):
        with Hardware(CPU, bf16=True).autocast(cache=False):
            assert torch.is_autocast_enabled("cpu")
            assert not torch.is_autocast_cache_enabled()


class TestAugmentationDraws:
    def test_draws_for_consecutive_batches_are_those_of_each_batch(self):
        torch.manual_seed(3)
        each = [BatchAugmenter.draw(count) for count in (64, 64, 17)]
        torch.manual_seed(3)
        together = BatchAugmenter.draw(64 + 64 + 17)
        assert torch.equal(torch.cat(each), together)

    def test_an_epochs_draws_taken_ahead_are_each_batchs_own(self):
        transform = InputTransform(True, BatchAugmenter(AugmentSpec(rotation_degrees=10)))
        draws = EpochDraws(transform, CPU)
        # On the CPU draws are made batch by batch; ahead, as a GPU's are, they are the same.
        assert draws.take(64) is None
        draws.ahead = True
        torch.manual_seed(9)
        draws.start_epoch(64 + 64 + 17)
        ahead = [draws.take(count) for count in (64, 64, 17)]
        torch.manual_seed(9)
        for taken, count in zip(ahead, (64, 64, 17), strict=True):
            assert taken is not None
            assert torch.equal(taken, BatchAugmenter.draw(count))

    def test_given_draws_move_the_images_as_drawing_them_would(self):
        augmenter = BatchAugmenter(AugmentSpec(rotation_degrees=15, translate=0.1))
        images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(4)
        drawn_here = augmenter(images)
        torch.manual_seed(4)
        given = augmenter(images, draws=BatchAugmenter.draw(8))
        assert torch.equal(drawn_here, given)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MnistTensors:
    data_dir: Path = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(data_dir, train=512, test=256)
    return load_mnist(data_dir)


class TestOnTheCpu:
    def test_a_job_on_the_cpu_trains_eagerly_and_says_why(self, mnist):
        # Graphs allowed by the hardware, as a GPU's would be: the CPU still trains eagerly.
        result = train(
            small_job(), mnist, RecordingReporter(), hardware=Hardware(CPU, False, graphs=True)
        )
        assert result.capture is not None
        assert result.capture.sizes == frozenset()
        assert result.capture.reasons == ("CUDA graphs need a CUDA device, not cpu",)

    def test_each_epoch_says_where_its_time_went(self, mnist, tmp_path):
        spec = small_job(data={"train_subset": 300, "validation": 100})
        result = train(
            spec, mnist, RecordingReporter(), Checkpointing(tmp_path, "job"), hardware=CPU_FP32
        )
        assert len(result.epoch_times) == spec.epochs
        for times in result.epoch_times:
            assert times.train > 0 and times.test > 0 and times.validation > 0
            assert times.checkpoint > 0 and times.report >= 0
            assert times.capture == 0
        assert result.setup_seconds > 0


def cuda_job(**fields: object) -> JobSpec:
    """Long enough for a capture: 20 full batches of 32 per epoch, and a last one of 12."""
    body = {
        "model": {"layers": small_layers(), "dropout": 0.1},
        "data": {"train_subset": 652, "augment": {"rotation_degrees": 10, "translate": 0.1}},
        "batch_size": 32,
        "epochs": 3,
        **fields,
    }
    return small_job(**body)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
class TestOnCuda:
    """The capture path itself: a GPU's job captured in graphs learns as the eager one does."""

    @pytest.fixture
    def on_gpu(self, mnist) -> MnistTensors:
        return mnist.to(torch.device("cuda"))

    def run(self, spec, data, graphs: bool):
        reporter = RecordingReporter()
        hardware = Hardware(torch.device("cuda"), bf16=True, graphs=graphs)
        return train(spec, data, reporter, hardware=hardware), reporter

    def test_graphed_steps_learn_as_eager_steps_do(self, on_gpu):
        spec = cuda_job()
        graphed, graphed_rows = self.run(spec, on_gpu, graphs=True)
        eager, eager_rows = self.run(spec, on_gpu, graphs=False)
        assert graphed.capture is not None and graphed.capture.sizes == {32}
        assert eager.capture is not None and eager.capture.sizes == frozenset()
        assert graphed.epoch_times[0].capture > 0
        assert all(times.capture == 0 for times in graphed.epoch_times[1:])
        # The same start: only dropout's masks and rounding tell them apart in the first epoch.
        first_graphed, first_eager = graphed_rows.rows[0], eager_rows.rows[0]
        assert first_graphed.train_loss == pytest.approx(first_eager.train_loss, rel=0.1)
        assert graphed_rows.rows[-1].test_accuracy > 0.6
        assert eager_rows.rows[-1].test_accuracy > 0.6

    def test_a_batch_size_schedule_captures_a_graph_per_size(self, on_gpu):
        spec = cuda_job(
            epochs=4,
            batch_size_schedule=[{"epoch": 0, "batch_size": 16}, {"epoch": 2, "batch_size": 32}],
        )
        result, reporter = self.run(spec, on_gpu, graphs=True)
        assert result.capture is not None and result.capture.sizes == {16, 32}
        assert [row.batch_size for row in reporter.rows] == [16, 16, 32, 32]
        assert result.epoch_times[2].capture > 0
        assert reporter.rows[-1].test_accuracy > 0.6

    def test_a_deterministic_job_trains_eagerly_on_cuda(self, on_gpu, monkeypatch):
        monkeypatch.setenv(CUBLAS_WORKSPACE_CONFIG, DEFAULT_CUBLAS_WORKSPACE)
        result, _ = self.run(cuda_job(deterministic=True), on_gpu, graphs=True)
        assert result.capture is not None and result.capture.sizes == frozenset()
