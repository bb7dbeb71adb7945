"""The validation split, on synthetic digits loaded as the worker loads MNIST."""

import hashlib
import random
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

from shared.spec import DataSpec
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.worker.small_jobs import CPU, small_job
from worker.training.data import MnistTensors, load_mnist
from worker.training.loop import Setup
from worker.training.splits import (
    indices_sha256,
    split_training_images,
    stratified_quotas,
    validation_indices,
)

TRAIN_IMAGES = 1000


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MnistTensors:
    data_dir = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(data_dir, train=TRAIN_IMAGES, test=100)
    return load_mnist(data_dir)


def data_spec(**fields: object) -> DataSpec:
    return DataSpec.model_validate(fields)


def as_set(indices: torch.Tensor) -> set[int]:
    return set(indices.tolist())


class TestStratifiedQuotas:
    def test_equal_shares_when_the_count_divides(self):
        assert stratified_quotas([100] * 10, 50) == [5] * 10

    def test_a_remainder_goes_one_each_to_as_many_classes(self):
        quotas = stratified_quotas([100] * 10, 53)
        assert sum(quotas) == 53
        assert sorted(quotas) == [5] * 7 + [6] * 3

    def test_a_small_class_gives_all_it_has_and_the_others_share_the_rest(self):
        # 3 + 8 + 9: the others could not be more even.
        assert sorted(stratified_quotas([3, 100, 100], 20)) == [3, 8, 9]
        assert stratified_quotas([3, 100, 100], 20)[0] == 3

    def test_every_image_when_the_count_is_the_total(self):
        assert stratified_quotas([3, 5, 7], 15) == [3, 5, 7]

    def test_more_than_there_are_is_an_error(self):
        with pytest.raises(ValueError, match="cannot hold out 16 images"):
            stratified_quotas([3, 5, 7], 16)

    def test_as_even_as_the_classes_allow_for_any_sizes(self):
        rng = random.Random(7)
        for _ in range(500):
            available = [rng.randrange(0, 30) for _ in range(10)]
            count = rng.randrange(0, sum(available) + 1)
            quotas = stratified_quotas(available, count)
            assert sum(quotas) == count
            assert all(0 <= q <= a for q, a in zip(quotas, available, strict=True))
            open_classes = [q for q, a in zip(quotas, available, strict=True) if q < a]
            if open_classes:
                # Classes with images to spare differ by one at most, and a class that gave
                # all it has holds no more than the most of them.
                assert max(open_classes) - min(open_classes) <= 1
                given_all = [q for q, a in zip(quotas, available, strict=True) if q == a]
                assert all(q <= max(open_classes) for q in given_all)


class TestSplit:
    def test_nothing_held_out_trains_on_every_image_in_file_order(self, mnist):
        split = split_training_images(mnist.train.labels, data_spec())
        assert split.validation.tolist() == []
        assert split.train.tolist() == list(range(TRAIN_IMAGES))

    def test_validation_and_training_indices_are_disjoint_and_cover_the_file(self, mnist):
        split = split_training_images(mnist.train.labels, data_spec(validation=200))
        assert len(split.validation) == 200
        assert as_set(split.train).isdisjoint(as_set(split.validation))
        assert as_set(split.train) | as_set(split.validation) == set(range(TRAIN_IMAGES))
        assert split.train.tolist() == sorted(split.train.tolist())
        assert split.validation.tolist() == sorted(split.validation.tolist())

    def test_each_digit_holds_out_the_same_share(self, mnist):
        held_out = validation_indices(mnist.train.labels, 200, seed=0)
        counts = Counter(mnist.train.labels[held_out].tolist())
        # Every synthetic digit has far more than 20 images.
        assert counts == dict.fromkeys(range(10), 20)

    def test_a_count_that_does_not_divide_differs_by_one_image_per_digit_at_most(self, mnist):
        held_out = validation_indices(mnist.train.labels, 205, seed=0)
        counts = Counter(mnist.train.labels[held_out].tolist())
        assert sum(counts.values()) == 205
        assert sorted(counts.values()) == [20] * 5 + [21] * 5

    def test_the_same_seed_draws_the_same_images(self, mnist):
        first = validation_indices(mnist.train.labels, 200, seed=5)
        assert torch.equal(first, validation_indices(mnist.train.labels, 200, seed=5))

    def test_another_seed_draws_other_images(self, mnist):
        first = as_set(validation_indices(mnist.train.labels, 200, seed=5))
        second = as_set(validation_indices(mnist.train.labels, 200, seed=6))
        assert first != second
        # Drawn independently, not shifted: they overlap about as chance has it (a fifth).
        assert len(first & second) < 100

    def test_the_split_leaves_torchs_global_generator_alone(self, mnist):
        torch.manual_seed(11)
        expected = torch.rand(3)
        torch.manual_seed(11)
        validation_indices(mnist.train.labels, 200, seed=5)
        assert torch.equal(torch.rand(3), expected)

    def test_train_subset_takes_the_first_images_that_are_not_held_out(self, mnist):
        split = split_training_images(
            mnist.train.labels, data_spec(validation=200, train_subset=300)
        )
        rest = [i for i in range(TRAIN_IMAGES) if i not in as_set(split.validation)]
        assert split.train.tolist() == rest[:300]
        assert as_set(split.train).isdisjoint(as_set(split.validation))

    def test_train_subset_alone_is_the_first_images_as_before(self, mnist):
        split = split_training_images(mnist.train.labels, data_spec(train_subset=300))
        assert split.train.tolist() == list(range(300))

    def test_the_record_counts_and_hashes_the_indices(self, mnist):
        split = split_training_images(mnist.train.labels, data_spec(validation=200))
        record = split.record()
        assert (record.train_images, record.validation_images) == (800, 200)
        packed = struct.pack("<200q", *split.validation.tolist())
        assert record.validation_sha256 == hashlib.sha256(packed).hexdigest()
        assert record.train_sha256 == indices_sha256(split.train)


class TestSetup:
    def test_the_job_seed_does_not_move_the_split(self, mnist):
        spec = small_job(data={"validation": 100, "validation_seed": 3})
        one = Setup.from_spec(spec, mnist, CPU)
        other = Setup.from_spec(spec.model_copy(update={"seed": 99}), mnist, CPU)
        assert one.split == other.split

    def test_trains_and_validates_on_the_images_at_the_split_indices(self, mnist):
        spec = small_job(data={"validation": 100, "train_subset": 500})
        setup = Setup.from_spec(spec, mnist, CPU)
        split = split_training_images(mnist.train.labels, spec.data)
        assert setup.validation_split is not None
        assert torch.equal(setup.validation_split.images, mnist.train.images[split.validation])
        assert torch.equal(setup.train_split.images, mnist.train.images[split.train])
        assert torch.equal(setup.train_split.labels, mnist.train.labels[split.train])
        assert len(setup.train_split) == 500
        assert setup.split == split.record()

    def test_without_validation_the_images_are_those_it_always_trained_on(self, mnist):
        setup = Setup.from_spec(small_job(data={"train_subset": 300}), mnist, CPU)
        assert setup.validation_split is None
        assert torch.equal(setup.train_split.images, mnist.train.first(300).images)
        assert setup.split.validation_images == 0


def test_the_file_holds_too_few_images_for_the_validation_asked(tmp_path: Path):
    write_synthetic_mnist(tmp_path, train=50, test=10)
    labels = load_mnist(tmp_path).train.labels
    with pytest.raises(ValueError, match="cannot hold out 60 images"):
        split_training_images(labels, data_spec(validation=60))
