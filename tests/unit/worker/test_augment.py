import torch

from shared.spec import AugmentSpec, JobSpec
from worker.training.augment import BatchAugmenter
from worker.training.data import InputTransform
from worker.training.optimizers import build_optimizer
from worker.training.schedules import LearningRateController


def digit_batch(count: int = 16) -> torch.Tensor:
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, 8:20, 12:16] = 255  # a bar in the middle, like a "1"
    return images


class TestBatchAugmenter:
    def test_off_by_default(self):
        assert not BatchAugmenter(AugmentSpec()).active

    def test_changes_the_images_but_keeps_their_shape_and_range(self):
        batch = digit_batch().unsqueeze(1).float() / 255
        torch.manual_seed(0)
        moved = BatchAugmenter(AugmentSpec(rotation_degrees=15, translate=0.1))(batch)
        assert moved.shape == batch.shape
        assert not torch.equal(moved, batch)
        assert moved.min() >= 0 and moved.max() <= 1
        # Each image is moved on its own: no two alike.
        assert len({tuple(image.flatten().tolist()) for image in moved}) == len(moved)

    def test_translation_alone_moves_ink_without_losing_it(self):
        batch = digit_batch().unsqueeze(1).float() / 255
        moved = BatchAugmenter(AugmentSpec(translate=0.1))(batch)
        # Shifts of up to 2.8 pixels keep the bar inside the image: about the same ink.
        assert torch.allclose(moved.sum(dim=(1, 2, 3)), batch.sum(dim=(1, 2, 3)), rtol=0.05)


class TestInputTransformAugments:
    def test_only_training_batches_are_augmented(self):
        images = digit_batch()
        transform = InputTransform(True, BatchAugmenter(AugmentSpec(rotation_degrees=30)))
        plain = InputTransform(True)
        assert torch.equal(transform(images), plain(images))
        assert not torch.equal(transform(images, train=True), plain(images))

    def test_augmented_batches_are_normalized_the_same_way(self):
        transform = InputTransform(True, BatchAugmenter(AugmentSpec(translate=0.01)))
        blank = transform(torch.zeros(4, 28, 28, dtype=torch.uint8), train=True)
        assert torch.allclose(blank, torch.full_like(blank, -0.1307 / 0.3081))


class TestMomentumCycling:
    def run(self, schedule: dict) -> list[float]:
        spec = JobSpec.model_validate({"epochs": 2, "schedule": schedule})
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = build_optimizer([parameter], spec.optimizer)
        control = LearningRateController(optimizer, spec, train_images=256)
        momenta = []
        for _ in range(4):
            optimizer.step()
            control.after_batch()
            momenta.append(optimizer.param_groups[0]["momentum"])
        return momenta

    def test_the_specs_momentum_is_kept_by_default(self):
        assert set(self.run({"name": "onecycle"})) == {0.9}

    def test_cycling_when_asked_for(self):
        assert len(set(self.run({"name": "onecycle", "cycle_momentum": True}))) > 1
