"""A trained job's network back from its checkpoint: rebuilt from the stored spec, fed plain
pixels, answering what training measured; a file that does not match its SHA-256 is
refused."""

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.messages import CheckpointRecord
from shared.spec import JobSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU, CPU_FP32
from worker.inference import CheckpointUnusable, DigitClassifier, load_model, predict
from worker.training.checkpoints import Checkpointing
from worker.training.data import InputTransform, MnistTensors, load_mnist
from worker.training.loop import train
from worker.training.model import build_for_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_spec(**fields: Any) -> JobSpec:
    body: dict[str, Any] = {
        "model": {
            "layers": [
                {"type": "conv", "out_channels": 6, "kernel_size": 5, "stride": 2},
                {"type": "conv", "out_channels": 8, "batch_norm": True, "dropout": 0.1},
                {"type": "maxpool", "kernel_size": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ]
        },
        "data": {"train_subset": 512, "test_subset": 200},
        "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "constant"},
        "batch_size": 64,
        "epochs": 1,
    }
    return JobSpec.model_validate({**body, **fields})


@pytest.fixture
def mnist(tmp_path: Path) -> MnistTensors:
    write_synthetic_mnist(tmp_path / "data", train=512, test=200)
    return load_mnist(tmp_path / "data")


def saved(spec: JobSpec, tmp_path: Path) -> tuple[torch.nn.Module, CheckpointRecord, Path]:
    """An untrained network of `spec`, written as the trainer writes a checkpoint."""
    torch.manual_seed(3)
    model = build_for_training(spec, CPU)
    # Batch norm's running statistics away from their defaults, so loading them matters.
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 28, 28))
    checkpointing = Checkpointing(tmp_path / "artifacts", "job_1")
    state = {"epoch": 0, "spec": spec.model_dump(mode="json"), "model": model.state_dict()}
    record = checkpointing.write(0, state, 0.5)
    return model.eval(), record, tmp_path / "artifacts" / record.path


class TestLoadModel:
    @pytest.mark.parametrize("normalize", [True, False])
    def test_answers_what_the_trained_network_answers_from_plain_pixels(
        self, tmp_path: Path, normalize: bool
    ):
        spec = tiny_spec(data={"normalize": normalize})
        original, record, path = saved(spec, tmp_path)
        pixels = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
        with torch.no_grad():
            expected = original(InputTransform(normalize)(pixels))

        model = load_model(path, expected_sha256=record.sha256)
        assert isinstance(model, DigitClassifier) and not model.training
        assert model.spec == spec
        with torch.no_grad():
            from_uint8 = model(pixels)
            from_unit_floats = model(pixels.unsqueeze(1).float() / 255.0)
        torch.testing.assert_close(from_uint8, expected)
        torch.testing.assert_close(from_unit_floats, expected)

    def test_the_accuracy_training_measured(self, mnist: MnistTensors, tmp_path: Path):
        spec = tiny_spec()
        recorder = RecordingReporter()
        checkpointing = Checkpointing(tmp_path / "artifacts", "job_1")
        train(spec, mnist, recorder, checkpointing, hardware=CPU_FP32)
        [record] = recorder.checkpoints

        model = load_model(tmp_path / "artifacts" / record.path, record.sha256)
        test = mnist.test.first(spec.data.test_subset)
        probabilities = predict(model, test.images)
        assert probabilities.shape == (len(test), 10)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(test)))
        accuracy = float((probabilities.argmax(dim=1) == test.labels).float().mean())
        assert accuracy == pytest.approx(recorder.rows[-1].test_accuracy)
        # Well above chance, so the equality above is not two models guessing alike.
        assert accuracy > 0.5

    def test_without_a_sha256_the_file_loads_as_it_is(self, tmp_path: Path):
        _, _, path = saved(tiny_spec(), tmp_path)
        assert isinstance(load_model(path), DigitClassifier)

    def test_a_wrong_sha256_refuses_to_load(self, tmp_path: Path):
        _, record, path = saved(tiny_spec(), tmp_path)
        with pytest.raises(CheckpointUnusable, match="does not match its recorded SHA-256"):
            load_model(path, expected_sha256="0" * 64)

    def test_a_tampered_file_refuses_to_load(self, tmp_path: Path):
        _, record, path = saved(tiny_spec(), tmp_path)
        path.write_bytes(path.read_bytes() + b"\0")
        assert hashlib.sha256(path.read_bytes()).hexdigest() != record.sha256
        with pytest.raises(CheckpointUnusable):
            load_model(path, expected_sha256=record.sha256)

    def test_a_file_that_is_no_checkpoint_is_refused(self, tmp_path: Path):
        path = tmp_path / "x.pt"
        torch.save({"weights": torch.zeros(3)}, path)
        with pytest.raises(CheckpointUnusable, match="not a Tunelab checkpoint"):
            load_model(path)

    def test_images_of_another_size_are_refused(self, tmp_path: Path):
        _, record, path = saved(tiny_spec(), tmp_path)
        with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
            load_model(path, record.sha256)(torch.zeros(2, 1, 32, 32))
