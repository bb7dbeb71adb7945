from typing import Any

import pytest
from pydantic import ValidationError

from shared.checks import SpecRejected, admit, resolve_model
from shared.presets import PRESETS, Preset
from shared.settings import Settings
from shared.spec import CyclicSchedule, JobSpec, OneCycleSchedule, SGDSpec


def conv(out_channels: int = 8, **fields: Any) -> dict[str, Any]:
    return {"type": "conv", "out_channels": out_channels, **fields}


def small_network(*hidden: dict[str, Any]) -> list[dict[str, Any]]:
    """The given layers, closed off so the network ends in ten outputs."""
    return [*hidden, {"type": "gap"}, {"type": "linear", "out_features": 10}]


def job_body(**fields: Any) -> dict[str, Any]:
    return dict(fields)


def rejected(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The locations pydantic names for an invalid spec body."""
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(body)
    return [tuple(error["loc"]) for error in caught.value.errors()]


class TestEmptySpec:
    def test_is_valid_and_resolves_to_the_baseline_preset(self):
        spec = JobSpec.model_validate({})
        assert spec.model.preset is None and spec.model.layers is None
        resolved = resolve_model(spec.model)
        assert resolved.preset == "baseline"
        assert resolved.layers == list(PRESETS["baseline"].layers)

    def test_trains_for_one_epoch(self):
        assert JobSpec.model_validate({}).epochs == 1

    def test_uses_sgd_and_onecycle_by_default(self):
        spec = JobSpec.model_validate({})
        assert isinstance(spec.optimizer, SGDSpec)
        assert isinstance(spec.schedule, OneCycleSchedule)

    def test_its_stored_form_validates_back_to_the_same_spec(self):
        spec = JobSpec.model_validate({})
        assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


class TestUnknownFields:
    @pytest.mark.parametrize(
        ("body", "location"),
        [
            (job_body(epoch=3), ("epoch",)),
            (job_body(model={"preset": "baseline", "depth": 3}), ("model", "depth")),
            (
                job_body(model={"layers": small_network(conv(kernel=3))}),
                ("model", "layers", 0, "conv", "kernel"),
            ),
            (
                job_body(model={"layers": [{"type": "gap", "size": 1}]}),
                ("model", "layers", 0, "gap", "size"),
            ),
            (
                job_body(optimizer={"name": "sgd", "learning_rate": 0.1}),
                ("optimizer", "sgd", "learning_rate"),
            ),
            (
                job_body(optimizer={"name": "adam", "momentum": 0.9}),
                ("optimizer", "adam", "momentum"),
            ),
            (job_body(schedule={"name": "step", "step": 2}), ("schedule", "step", "step")),
            (
                job_body(schedule={"name": "onecycle", "peak_lr": 0.1}),
                ("schedule", "onecycle", "peak_lr"),
            ),
            (job_body(data={"augment": {"rotate": 10}}), ("data", "augment", "rotate")),
            (
                job_body(batch_size_schedule=[{"epoch": 0, "batch_size": 64, "size": 1}]),
                ("batch_size_schedule", 0, "size"),
            ),
        ],
    )
    def test_are_rejected_where_they_appear(self, body, location):
        assert rejected(body) == [location]


class TestLayers:
    @pytest.mark.parametrize(
        "layer",
        [
            conv(16, kernel_size=1),
            conv(16, kernel_size=5, stride=2, padding=2, batch_norm=True, dropout=0.1),
            conv(16, activation="gelu"),
            {"type": "maxpool", "kernel_size": 3, "stride": 1, "padding": 1},
            {"type": "avgpool", "kernel_size": 2},
            {"type": "dropout", "p": 0.25},
        ],
    )
    def test_each_spatial_layer_type_is_accepted(self, layer):
        spec = JobSpec.model_validate({"model": {"layers": small_network(layer)}})
        assert spec.model.layers[0].type == layer["type"]
        assert spec.model.preset is None

    @pytest.mark.parametrize(
        "layers",
        [
            [conv(), {"type": "gap"}, {"type": "linear", "out_features": 10}],
            [conv(), {"type": "flatten"}, {"type": "linear", "out_features": 10}],
            [
                {"type": "linear", "out_features": 32, "activation": "relu", "dropout": 0.2},
                {"type": "linear", "out_features": 10},
            ],
        ],
    )
    def test_each_head_layer_type_is_accepted(self, layers):
        spec = JobSpec.model_validate({"model": {"layers": layers}})
        assert [layer.type for layer in spec.model.layers] == [layer["type"] for layer in layers]

    def test_unset_conv_dropout_defers_to_the_model_wide_one(self):
        spec = JobSpec.model_validate({"model": {"layers": small_network(conv())}})
        assert spec.model.layers[0].dropout is None


class TestOptimizers:
    @pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
    def test_each_is_accepted_with_an_lr(self, name):
        spec = JobSpec.model_validate({"optimizer": {"name": name, "lr": 0.02}})
        assert spec.optimizer.name == name
        assert spec.optimizer.lr == 0.02

    def test_adamw_decays_weights_by_default_and_adam_does_not(self):
        adam = JobSpec.model_validate({"optimizer": {"name": "adam"}}).optimizer
        adamw = JobSpec.model_validate({"optimizer": {"name": "adamw"}}).optimizer
        assert adam.weight_decay == 0.0
        assert adamw.weight_decay > 0.0

    def test_nesterov_with_momentum_is_accepted(self):
        body = {"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}}
        assert JobSpec.model_validate(body).optimizer.nesterov is True


class TestSchedules:
    @pytest.mark.parametrize(
        "schedule",
        [
            {"name": "constant"},
            {"name": "step", "step_size": 2, "gamma": 0.5},
            {"name": "multistep", "milestones": [1, 3], "gamma": 0.5},
            {"name": "exponential", "gamma": 0.8},
            {"name": "cosine", "eta_min": 0.001},
            {"name": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "mode": "triangular2"},
            {"name": "onecycle", "max_lr": 0.2, "pct_start": 0.25},
            {"name": "plateau", "factor": 0.5, "patience": 1},
            {"name": "step", "warmup_epochs": 1},
        ],
    )
    def test_each_is_accepted(self, schedule):
        spec = JobSpec.model_validate({"epochs": 4, "schedule": schedule})
        assert spec.schedule.name == schedule["name"]

    def test_cyclic_without_a_cycle_length_gets_one_in_epochs(self):
        schedule = JobSpec.model_validate({"schedule": {"name": "cyclic"}}).schedule
        assert isinstance(schedule, CyclicSchedule)
        assert schedule.step_size_up is None
        assert schedule.cycle_epochs is not None and schedule.cycle_epochs > 0

    def test_cyclic_with_step_size_up_keeps_it_alone(self):
        body = {"schedule": {"name": "cyclic", "step_size_up": 50}}
        schedule = JobSpec.model_validate(body).schedule
        assert isinstance(schedule, CyclicSchedule)
        assert (schedule.step_size_up, schedule.cycle_epochs) == (50, None)


class TestBadValues:
    @pytest.mark.parametrize(
        ("body", "location"),
        [
            (job_body(optimizer={"name": "sgd", "lr": -0.1}), ("optimizer", "sgd", "lr")),
            (job_body(optimizer={"name": "adam", "lr": 0}), ("optimizer", "adam", "lr")),
            (
                job_body(model={"layers": small_network(conv(kernel_size=0))}),
                ("model", "layers", 0, "conv", "kernel_size"),
            ),
            (
                job_body(model={"layers": small_network(conv(dropout=1.0))}),
                ("model", "layers", 0, "conv", "dropout"),
            ),
            (
                job_body(model={"layers": small_network({"type": "dropout", "p": 1.0})}),
                ("model", "layers", 0, "dropout", "p"),
            ),
            (job_body(model={"preset": "baseline", "dropout": 1.0}), ("model", "dropout")),
            (
                job_body(optimizer={"name": "sgd", "momentum": 0.0, "nesterov": True}),
                ("optimizer", "sgd"),
            ),
            (
                job_body(schedule={"name": "cyclic", "base_lr": 0.1, "max_lr": 0.1}),
                ("schedule", "cyclic"),
            ),
            (
                job_body(schedule={"name": "cyclic", "base_lr": 0.2, "max_lr": 0.1}),
                ("schedule", "cyclic"),
            ),
            (
                job_body(schedule={"name": "cyclic", "step_size_up": 10, "cycle_epochs": 2}),
                ("schedule", "cyclic"),
            ),
            (
                job_body(schedule={"name": "multistep", "milestones": [2, 2]}),
                ("schedule", "multistep"),
            ),
            (
                job_body(schedule={"name": "multistep", "milestones": [3, 1]}),
                ("schedule", "multistep"),
            ),
            (job_body(schedule={"name": "warmup"}), ("schedule",)),
            (job_body(epochs=0), ("epochs",)),
            (job_body(batch_size=0), ("batch_size",)),
            (job_body(batch_size_schedule=[]), ("batch_size_schedule",)),
            (job_body(model={"layers": []}), ("model", "layers")),
        ],
    )
    def test_are_rejected_at_their_location(self, body, location):
        assert rejected(body) == [location]


class TestPresets:
    def test_unknown_preset_is_rejected_at_model_preset(self):
        model = JobSpec.model_validate({"model": {"preset": "tiny"}}).model
        with pytest.raises(SpecRejected) as caught:
            resolve_model(model)
        [problem] = caught.value.problems
        assert problem.location == ("model", "preset")
        assert "unknown preset 'tiny'" in problem.message and "baseline" in problem.message

    def test_preset_with_different_layers_is_rejected(self):
        body = {"model": {"preset": "baseline", "layers": small_network(conv())}}
        with pytest.raises(SpecRejected) as caught:
            resolve_model(JobSpec.model_validate(body).model)
        assert [p.location for p in caught.value.problems] == [("model",)]

    def test_preset_with_its_own_layers_is_accepted(self):
        # A stored spec carries both, and must be accepted when submitted again.
        layers = [layer.model_dump() for layer in PRESETS["baseline"].layers]
        model = JobSpec.model_validate({"model": {"preset": "baseline", "layers": layers}}).model
        assert resolve_model(model).layers == list(PRESETS["baseline"].layers)

    def test_explicit_layers_leave_the_preset_unset(self):
        model = JobSpec.model_validate({"model": {"layers": small_network(conv())}}).model
        resolved = resolve_model(model)
        assert resolved.preset is None
        assert resolved.layers is not None and len(resolved.layers) == 3

    def test_a_stored_spec_reads_on_its_own_whatever_the_presets_are_now(self, monkeypatch):
        stored = admit(JobSpec.model_validate({"model": {"preset": "compact-8k"}}), Settings())[0]
        row = stored.model_dump(mode="json")
        monkeypatch.delitem(PRESETS, "compact-8k")
        # Reading it back never looks the preset up: the layers are what trains.
        read = JobSpec.model_validate(row)
        assert read == stored
        assert read.model.preset == "compact-8k"

    def test_preset_tables_are_validated_once_when_made(self):
        with pytest.raises(ValidationError):
            Preset(name="broken", description="", raw_layers=({"type": "conv"},))


class TestBatchSizeForEpoch:
    def test_without_a_schedule_every_epoch_uses_batch_size(self):
        spec = JobSpec.model_validate({"batch_size": 96, "epochs": 3})
        assert [spec.batch_size_for_epoch(epoch) for epoch in range(3)] == [96, 96, 96]

    def test_each_entry_holds_from_its_epoch_on(self):
        spec = JobSpec.model_validate(
            {
                "batch_size": 96,
                "epochs": 6,
                "batch_size_schedule": [
                    {"epoch": 0, "batch_size": 512},
                    {"epoch": 2, "batch_size": 256},
                    {"epoch": 5, "batch_size": 64},
                ],
            }
        )
        sizes = [spec.batch_size_for_epoch(epoch) for epoch in range(6)]
        assert sizes == [512, 512, 256, 256, 256, 64]

    def test_a_single_entry_replaces_batch_size(self):
        spec = JobSpec.model_validate(
            {"batch_size": 96, "epochs": 2, "batch_size_schedule": [{"epoch": 0, "batch_size": 32}]}
        )
        assert [spec.batch_size_for_epoch(epoch) for epoch in range(2)] == [32, 32]
