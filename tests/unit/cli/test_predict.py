"""`tunelab predict`'s images and answers: PNGs read as MNIST's digits are (converted, never
inverted), and a checkpoint's network answering a line per image."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from cli.client.predict import Prediction, predict_files, read_image
from cli.errors import CommandFailed
from shared.spec import JobSpec
from worker.training.checkpoints import Checkpointing
from worker.training.model import build_for_training


def saved_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    spec = JobSpec.model_validate(
        {
            "model": {
                "layers": [
                    {"type": "conv", "out_channels": 4, "kernel_size": 5, "stride": 2},
                    {"type": "flatten"},
                    {"type": "linear", "out_features": 10},
                ]
            }
        }
    )
    torch.manual_seed(0)
    model = build_for_training(spec, torch.device("cpu"))
    state = {"epoch": 0, "spec": spec.model_dump(mode="json"), "model": model.state_dict()}
    record = Checkpointing(tmp_path, "job_1").write(0, state, 0.5)
    return tmp_path / record.path, record.sha256


class TestReadImage:
    def test_a_28x28_grayscale_png_is_its_pixels(self, tmp_path: Path):
        pixels = bytes(range(256)) * 3 + bytes(784 - 768)
        Image.frombytes("L", (28, 28), pixels).save(tmp_path / "d.png")
        image = read_image(tmp_path / "d.png")
        assert image.dtype == torch.uint8 and image.shape == (28, 28)
        assert bytes(image.flatten().tolist()) == pixels

    def test_colour_and_size_are_converted_but_never_inverted(self, tmp_path: Path):
        Image.new("RGB", (56, 56), (255, 255, 255)).save(tmp_path / "white.png")
        image = read_image(tmp_path / "white.png")
        assert image.shape == (28, 28)
        # White paper stays white: an inverted image would be all ink-free black.
        assert int(image.min()) == 255

    def test_a_file_that_is_no_image_is_one_line(self, tmp_path: Path):
        (tmp_path / "x.png").write_text("not a png")
        with pytest.raises(CommandFailed, match=r"cannot read the image .*x\.png"):
            read_image(tmp_path / "x.png")
        with pytest.raises(CommandFailed, match="No such file"):
            read_image(tmp_path / "missing.png")


class TestPredictFiles:
    def test_a_digit_and_its_probability_per_image(self, tmp_path: Path):
        checkpoint, sha256 = saved_checkpoint(tmp_path)
        paths = []
        for index in range(3):
            path = tmp_path / f"{index}.png"
            Image.effect_noise((28, 28), 40 + index * 20).save(path)
            paths.append(path)
        predictions = predict_files(checkpoint, sha256, paths)
        assert [p.path for p in predictions] == paths
        assert all(0 <= p.digit <= 9 and 0.1 <= p.probability <= 1 for p in predictions)
        assert predictions[0].line().split("\t") == [
            str(paths[0]),
            str(predictions[0].digit),
            f"{predictions[0].probability:.4f}",
        ]

    def test_a_checkpoint_that_does_not_match_is_refused(self, tmp_path: Path):
        checkpoint, _ = saved_checkpoint(tmp_path)
        Image.new("L", (28, 28)).save(tmp_path / "d.png")
        with pytest.raises(CommandFailed, match="does not match its recorded SHA-256"):
            predict_files(checkpoint, "0" * 64, [tmp_path / "d.png"])

    def test_the_line_format(self):
        assert Prediction(Path("a b.png"), 7, 0.98765).line() == "a b.png\t7\t0.9877"
