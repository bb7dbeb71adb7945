"""`data.validation`, `data.validation_seed` and `deterministic` in the job spec."""

from typing import Any

import pytest
from pydantic import ValidationError

from shared.analysis import analyze
from shared.checks import SpecRejected, check_spec, estimated_multiply_adds
from shared.settings import Settings
from shared.spec import MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES, DataSpec, JobSpec

MODEL = {
    "layers": [
        {"type": "conv", "out_channels": 8, "stride": 2},
        {"type": "gap"},
        {"type": "linear", "out_features": 10},
    ]
}


def job(**data: Any) -> JobSpec:
    return JobSpec.model_validate({"model": MODEL, "data": data})


def error_locations(body: dict[str, Any]) -> list[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(body)
    return [tuple(error["loc"]) for error in caught.value.errors()]


class TestFields:
    def test_defaults_hold_nothing_out_and_ask_for_no_determinism(self):
        spec = JobSpec()
        assert (spec.data.validation, spec.data.validation_seed) == (0, 0)
        assert spec.deterministic is False

    @pytest.mark.parametrize("count", [-1, MNIST_TRAIN_IMAGES - 1, MNIST_TRAIN_IMAGES])
    def test_validation_leaves_at_least_two_images_to_train_on(self, count):
        assert error_locations({"data": {"validation": count}}) == [("data", "validation")]

    def test_the_most_validation(self):
        assert job(validation=MNIST_TRAIN_IMAGES - 2).data.train_images() == 2

    @pytest.mark.parametrize("seed", [-1, 2**31])
    def test_validation_seed_is_a_31_bit_integer(self, seed):
        assert error_locations({"data": {"validation_seed": seed}}) == [("data", "validation_seed")]

    def test_deterministic_is_a_boolean(self):
        assert error_locations({"deterministic": "sometimes"}) == [("deterministic",)]

    def test_images_trained_on(self):
        assert DataSpec().train_images() == MNIST_TRAIN_IMAGES
        assert DataSpec(validation=10_000).train_images() == 50_000
        assert DataSpec(validation=10_000, train_subset=20_000).train_images() == 20_000


class TestTrainSubsetWithValidation:
    def test_a_subset_of_what_validation_leaves_is_accepted(self):
        check_spec(job(validation=10_000, train_subset=50_000), Settings())

    def test_a_larger_subset_is_refused_naming_it(self):
        with pytest.raises(SpecRejected) as caught:
            check_spec(job(validation=10_000, train_subset=50_001), Settings())
        [problem] = caught.value.problems
        assert problem.location == ("data", "train_subset")
        assert "at most 50000" in problem.message
        assert "data.validation" in problem.message


class TestEstimatedCompute:
    def test_validation_images_cost_one_forward_pass_instead_of_three(self):
        spec = job(validation=10_000)
        per_image = analyze(spec.model.layers or []).multiply_adds
        estimate = estimated_multiply_adds(spec, analyze(spec.model.layers or []))
        assert estimate == per_image * (50_000 * 3 + 10_000 + MNIST_TEST_IMAGES)
