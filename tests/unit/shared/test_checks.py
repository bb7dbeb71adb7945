from typing import Any

import pytest

from shared.analysis import analyze
from shared.checks import Problem, SpecRejected, check_spec
from shared.settings import Settings
from shared.spec import JobSpec


def small_limits(**overrides: Any) -> Settings:
    limits: dict[str, Any] = {
        "max_epochs": 5,
        "max_batch_size": 256,
        "max_channels": 32,
        "max_layers": 8,
        "max_parameters": 20_000,
        "max_multiply_adds": 10_000_000,
    }
    return Settings(**{**limits, **overrides})


def conv(out_channels: int = 8, **fields: Any) -> dict[str, Any]:
    return {"type": "conv", "out_channels": out_channels, **fields}


def head(outputs: int = 10) -> list[dict[str, Any]]:
    return [{"type": "gap"}, {"type": "linear", "out_features": outputs}]


def small_model(*layers: dict[str, Any]) -> dict[str, Any]:
    """A model of the given layers; without any, two strided convs and a ten-way head."""
    if not layers:
        layers = (conv(8, stride=2), conv(16, stride=2), *head())
    return {"layers": list(layers)}


def job(**fields: Any) -> JobSpec:
    body: dict[str, Any] = {"model": small_model(), "batch_size": 64, "epochs": 3}
    return JobSpec.model_validate({**body, **fields})


def steps(*pairs: tuple[int, int]) -> list[dict[str, int]]:
    return [{"epoch": epoch, "batch_size": size} for epoch, size in pairs]


def problems(spec: JobSpec, settings: Settings | None = None) -> list[Problem]:
    with pytest.raises(SpecRejected) as caught:
        check_spec(spec, settings or small_limits())
    return caught.value.problems


def locations(spec: JobSpec, settings: Settings | None = None) -> list[tuple[str | int, ...]]:
    return [problem.location for problem in problems(spec, settings)]


class TestCheckSpecAccepts:
    def test_a_small_valid_spec_and_returns_its_analysis(self):
        analysis = check_spec(job(), small_limits())
        assert analysis.output_shape == [10]
        assert len(analysis.layers) == 4

    def test_values_exactly_at_the_limits(self):
        spec = job(epochs=5, batch_size=256, model=small_model(conv(32, stride=2), *head()))
        cost = analyze(spec.model.layers)
        settings = small_limits(
            max_layers=3, max_parameters=cost.parameters, max_multiply_adds=cost.multiply_adds
        )
        assert check_spec(spec, settings).parameters == cost.parameters

    def test_a_ten_channel_conv_and_gap_as_the_head(self):
        spec = job(model=small_model(conv(8, stride=2), conv(10), {"type": "gap"}))
        assert check_spec(spec, small_limits()).output_shape == [10]

    def test_a_valid_batch_size_schedule(self):
        spec = job(epochs=4, batch_size_schedule=steps((0, 128), (2, 64), (3, 32)))
        check_spec(spec, small_limits())


class TestBatchSizeScheduleRules:
    def test_it_must_start_at_epoch_zero(self):
        spec = job(batch_size_schedule=steps((1, 64)))
        assert locations(spec) == [("batch_size_schedule", 0, "epoch")]

    def test_repeated_epoch_names_the_later_entry(self):
        spec = job(epochs=5, batch_size_schedule=steps((0, 64), (2, 32), (2, 16)))
        assert locations(spec) == [("batch_size_schedule", 2, "epoch")]

    def test_decreasing_epoch_names_the_entry_that_goes_back(self):
        spec = job(epochs=5, batch_size_schedule=steps((0, 64), (3, 32), (1, 16)))
        assert locations(spec) == [("batch_size_schedule", 2, "epoch")]

    def test_an_entry_past_the_last_epoch(self):
        # Epochs count from 0, so a 3-epoch job's last epoch is 2.
        spec = job(epochs=3, batch_size_schedule=steps((0, 64), (3, 32)))
        found = problems(spec)
        assert [problem.location for problem in found] == [("batch_size_schedule", 1, "epoch")]
        assert "3" in found[0].message


class TestScheduleRules:
    def test_milestones_outside_the_epochs(self):
        spec = job(epochs=3, schedule={"name": "multistep", "milestones": [1, 3]})
        assert locations(spec) == [("schedule", "milestones")]

    def test_milestones_inside_the_epochs_are_fine(self):
        spec = job(epochs=3, schedule={"name": "multistep", "milestones": [1, 2]})
        check_spec(spec, small_limits())

    @pytest.mark.parametrize("warmup_epochs", [3, 4])
    def test_warmup_as_long_as_the_job(self, warmup_epochs):
        spec = job(epochs=3, schedule={"name": "step", "warmup_epochs": warmup_epochs})
        assert locations(spec) == [("schedule", "warmup_epochs")]

    def test_warmup_shorter_than_the_job_is_fine(self):
        spec = job(epochs=3, schedule={"name": "constant", "warmup_epochs": 2})
        check_spec(spec, small_limits())


class TestServiceLimits:
    def test_max_epochs(self):
        found = problems(job(epochs=6))
        assert [(problem.location, problem.code) for problem in found] == [(("epochs",), "limit")]
        assert "5" in found[0].message

    def test_max_batch_size(self):
        assert locations(job(batch_size=512)) == [("batch_size",)]

    def test_max_batch_size_inside_the_batch_size_schedule(self):
        spec = job(batch_size_schedule=steps((0, 128), (1, 512), (2, 64)))
        assert locations(spec) == [("batch_size_schedule", 1, "batch_size")]

    def test_max_channels_names_the_conv(self):
        spec = job(model=small_model(conv(8, stride=2), conv(33, stride=2), *head()))
        assert locations(spec) == [("model", "layers", 1, "out_channels")]

    def test_max_channels_applies_to_linear_widths(self):
        layers = [
            conv(8, stride=2),
            {"type": "gap"},
            {"type": "linear", "out_features": 64},
            {"type": "linear", "out_features": 10},
        ]
        assert locations(job(model=small_model(*layers))) == [
            ("model", "layers", 2, "out_features")
        ]

    def test_max_layers(self):
        spec = job(model=small_model(conv(4), conv(4), conv(4, stride=2), *head()))
        assert locations(spec, small_limits(max_layers=4)) == [("model", "layers")]

    def test_max_parameters(self):
        found = problems(job(), small_limits(max_parameters=100))
        assert [(problem.location, problem.code) for problem in found] == [(("model",), "limit")]
        assert "100" in found[0].message

    def test_max_multiply_adds(self):
        assert locations(job(), small_limits(max_multiply_adds=1000)) == [("model",)]

    def test_max_job_multiply_adds_counts_every_image_of_every_epoch(self):
        spec = job(epochs=2, data={"train_subset": 1000, "test_subset": 500})
        per_image = analyze(spec.model.layers).multiply_adds
        needed = per_image * (1000 * 3 + 500) * 2
        assert check_spec(spec, small_limits(max_job_multiply_adds=needed))
        found = problems(spec, small_limits(max_job_multiply_adds=needed - 1))
        assert [(problem.location, problem.code) for problem in found] == [(("epochs",), "limit")]
        assert "train_subset" in found[0].message

    def test_an_lr_range_test_costs_its_steps(self):
        spec = job(kind="lr_range_test", lr_range_test={"steps": 100}, batch_size=64)
        per_image = analyze(spec.model.layers).multiply_adds
        assert check_spec(spec, small_limits(max_job_multiply_adds=per_image * 3 * 6400))
        assert problems(spec, small_limits(max_job_multiply_adds=per_image * 3 * 6400 - 1))


class TestArchitectureRules:
    @pytest.mark.parametrize(
        "layers",
        [
            [conv(8), {"type": "gap"}],
            [conv(8, stride=2), *head(outputs=7)],
            [conv(10, kernel_size=5, stride=4)],
        ],
    )
    def test_a_network_not_ending_in_ten_outputs(self, layers):
        assert locations(job(model=small_model(*layers))) == [("model", "layers")]

    def test_a_model_shrinking_below_one_pixel_names_the_layer(self):
        layers = [
            conv(8, kernel_size=5, stride=2),
            conv(8, kernel_size=3, stride=2),
            {"type": "maxpool", "kernel_size": 4},
            conv(8, kernel_size=3),
            *head(),
        ]
        found = problems(job(model=small_model(*layers)))
        # 28 -> 12 -> 5 -> 1 and then a 3x3 conv has nothing left to cover.
        assert [problem.location for problem in found] == [("model", "layers", 3)]
        assert "below 1x1" in found[0].message

    def test_a_conv_after_gap_names_the_layer(self):
        layers = [conv(8), {"type": "gap"}, conv(10), {"type": "gap"}]
        assert locations(job(model=small_model(*layers))) == [("model", "layers", 2)]

    def test_every_problem_is_reported_at_once(self):
        layers = [conv(8), {"type": "gap"}]
        spec = job(
            epochs=6, batch_size=512, model=small_model(*layers), batch_size_schedule=steps((1, 64))
        )
        assert set(locations(spec)) == {
            ("batch_size_schedule", 0, "epoch"),
            ("epochs",),
            ("batch_size",),
            ("model", "layers"),
        }
