"""What the job commands print, from the API's JSON: epoch and progress lines, the summary,
the jobs table, one job, and where specs differ."""

import io

from rich.console import Console, RenderableType

from cli.client.job_views import (
    compare_json,
    compare_view,
    epoch_line,
    job_view,
    jobs_table,
    progress_line,
    summary_line,
)
from cli.client.spec_diff import MISSING, differences, flatten
from tests.unit.cli.jobs_json import job_json, row_json, spec_json


def text_of(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=200, markup=False, highlight=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def lr_range_job(**fields):
    curve = {
        "points": [
            {"lr": 1e-4, "loss": 2.3, "smoothed_loss": 2.3},
            {"lr": 1e-3, "loss": 2.0, "smoothed_loss": 2.1},
            {"lr": 1e-2, "loss": 0.9, "smoothed_loss": 1.2},
            {"lr": 1e-1, "loss": 0.5, "smoothed_loss": 0.7},
        ],
        "suggested_lr": 0.0123,
        "min_loss_lr": 0.1,
        "diverged_at_lr": 0.5,
    }
    return job_json(
        "job_lr",
        spec=spec_json(kind="lr_range_test", name="find-lr"),
        best=None,
        latest_metrics=None,
        checkpoints=[],
        result={"lr_range_test": curve},
        progress={"epochs_completed": 0, "epochs": 2},
        **fields,
    )


class TestWatchLines:
    def test_an_epoch_line_names_each_metric_as_the_api_does(self):
        assert epoch_line(row_json(0), epochs=2) == (
            "epoch 0 (1 of 2): train_loss 0.5000 train_accuracy 0.8000 test_loss 0.4000 "
            "test_accuracy 0.8500 lr 0.05 12.3 s"
        )

    def test_a_progress_line_with_and_without_a_pace(self):
        progress = {
            "phase": "train",
            "epoch": 3,
            "batches_completed": 120,
            "batches": 469,
            "images_per_second": 4861.2,
            "eta_seconds": 125.0,
        }
        assert progress_line(progress) == "epoch 3: batch 120/469, 4,861 images/s, ETA 2m 05s"
        early = {**progress, "batches_completed": 0, "images_per_second": None, "eta_seconds": None}
        assert progress_line(early) == "epoch 3: batch 0/469"
        sweep = {**progress, "phase": "lr_range_test", "epoch": 0}
        assert progress_line(sweep).startswith("LR range test: batch 120/469")

    def test_the_summary_of_each_ending(self):
        assert str(summary_line(job_json())) == (
            "job job_1 succeeded: best test_accuracy 0.8600 at epoch 1, 2 of 2 epochs in 25s"
        )
        failed = job_json(
            status="failed",
            best=None,
            progress={"epochs_completed": 0, "epochs": 2},
            error={"type": "diverged", "message": "the training loss became nan in epoch 0"},
        )
        assert str(summary_line(failed)) == (
            "job job_1 failed: 0 of 2 epochs in 25s; diverged: the training loss became nan "
            "in epoch 0"
        )
        pruned = job_json(status="pruned", pruned_reason="stopped by asha after epoch 0")
        assert str(summary_line(pruned)).endswith("; stopped by asha after epoch 0")
        assert str(summary_line(lr_range_job())) == (
            "job job_lr succeeded: suggested lr 0.0123, lowest loss at lr 0.1 in 25s"
        )


class TestJobsTable:
    def test_a_row_per_job(self):
        running = job_json(
            "job_2",
            spec=spec_json(name="long", tags=["lr-sweep", "v2"]),
            status="running",
            finished_at=None,
            best={"epoch": 0, "test_accuracy": 0.9512},
            progress={
                "epochs_completed": 1,
                "epochs": 2,
                "batches_completed": 50,
                "batches": 469,
                "images_per_second": 4000.0,
                "eta_seconds": 40.0,
            },
        )
        lines = text_of(jobs_table([running, job_json(), lr_range_job()])).splitlines()
        assert lines[0].split() == [
            "id",
            "name",
            "status",
            "tags",
            "epochs",
            "best",
            "created",
        ]
        assert lines[2].split() == [
            "job_2",
            "long",
            "running",
            "lr-sweep,",
            "v2",
            "1/2",
            "(50/469)",
            "0.9512",
            "@0",
            "2026-12-01",
            "10:00",
        ]
        assert lines[3].split()[:6] == ["job_1", "baseline-2", "succeeded", "2/2", "0.8600", "@1"]
        assert lines[4].split()[:6] == ["job_lr", "find-lr", "succeeded", "—", "lr", "0.0123"]


class TestShow:
    def test_a_finished_job_in_full(self):
        job = job_json(spec=spec_json(tags=["baseline"]))
        text = text_of(job_view(job))
        assert text.splitlines()[0] == "job job_1  baseline-2  succeeded"
        assert "tags         baseline" in text
        assert "finished     2026-12-01 10:00:27 UTC (after 25s)" in text
        assert "progress     2 of 2 epochs" in text
        assert "model        4 layers, 7,912 parameters, receptive field 28" in text
        assert "best         epoch 1: test_accuracy 0.8600" in text
        assert "latest       epoch 1 (2 of 2): train_loss 0.2500" in text
        sha256 = job["checkpoints"][1]["sha256"]
        assert f"epoch-001.pt      1         0.8600  41,234  {sha256[:16]}…" in text

    def test_a_running_job_shows_where_its_epoch_is(self):
        job = job_json(
            status="running",
            finished_at=None,
            progress={
                "epochs_completed": 1,
                "epochs": 2,
                "batches_completed": 5,
                "batches": 8,
                "images_per_second": 1000.0,
                "eta_seconds": None,
            },
        )
        assert "progress     1 of 2 epochs; epoch 1: batch 5/8, 1,000 images/s" in text_of(
            job_view(job)
        )

    def test_a_failed_job_says_why_and_an_lr_range_test_what_it_found(self):
        failed = job_json(status="failed", error={"type": "oom", "message": "out of memory"})
        assert "error        oom: out of memory" in text_of(job_view(failed))
        found = text_of(job_view(lr_range_job()))
        assert (
            "lr range test  suggested lr 0.0123, lowest loss at lr 0.1, 4 points, diverged at "
            "lr 0.5"
        ) in found


class TestSpecDiff:
    def test_flatten_uses_the_paths_of_a_study_space(self):
        spec = {"a": {"b": [1, {"c": 2}], "e": {}}, "f": [], "g": [0.9, 0.99]}
        assert flatten(spec) == {
            "a.b[0]": 1,
            "a.b[1].c": 2,
            "a.e": {},
            "f": [],
            "g": [0.9, 0.99],
        }

    def test_only_the_differing_paths_with_each_value(self):
        one = spec_json(optimizer={"name": "sgd", "lr": 0.05})
        two = spec_json(optimizer={"name": "adam", "lr": 0.001}, batch_size=128)
        found = differences([one, two])
        assert list(found) == [
            "optimizer.name",
            "optimizer.lr",
            "optimizer.momentum",
            "optimizer.nesterov",
            "optimizer.betas",
            "optimizer.eps",
        ]
        assert found["optimizer.lr"] == [0.05, 0.001]
        assert found["optimizer.momentum"] == [0.9, MISSING]
        assert found["optimizer.betas"] == [MISSING, [0.9, 0.999]]

    def test_equal_numbers_are_the_same_but_true_is_not_one(self):
        assert differences([{"a": 1, "b": True}, {"a": 1.0, "b": 1}]) == {"b": [True, 1]}

    def test_a_layer_more_is_a_path_one_spec_lacks(self):
        layers = spec_json()["model"]["layers"]
        longer = spec_json(model={"layers": [{"type": "conv", "out_channels": 4}, *layers]})
        found = differences([spec_json(), longer])
        assert found["model.layers[0].out_channels"] == [8, 4]
        assert found["model.layers[4].out_features"] == [MISSING, 10]


class TestCompare:
    def jobs(self):
        one = job_json("job_1")
        two = job_json(
            "job_2",
            spec=spec_json(name="wider", optimizer={"name": "sgd", "lr": 0.1}, seed=3),
            status="failed",
            best=None,
            finished_at="2026-12-01T10:01:02Z",
        )
        return [one, two]

    def test_the_differing_keys_then_the_results(self):
        lines = text_of(compare_view(self.jobs())).splitlines()
        assert lines[0].split() == ["job_1", "job_2"]
        assert lines[1].split() == ["spec", "baseline-2", "wider"]
        body = [line.split() for line in lines[3:]]
        assert ["optimizer.lr", "0.05", "0.1"] in body
        assert ["seed", "0", "3"] in body
        # The name is each column's header, not a difference of its own.
        assert not any(row and row[0] == "name" for row in body)
        assert ["status", "succeeded", "failed"] in body
        assert ["best", "test_accuracy", "0.8600", "—"] in body
        assert ["best", "epoch", "1", "—"] in body
        assert ["duration", "25s", "1m", "00s"] in body

    def test_the_same_specs_say_so(self):
        text = text_of(compare_view([job_json("job_1"), job_json("job_2")]))
        assert text.splitlines()[0] == "the specs are the same (but for their names)"

    def test_as_json_null_where_a_spec_lacks_a_path(self):
        one = job_json("job_1")
        two = job_json("job_2", spec=spec_json(optimizer={"name": "adam"}))
        document = compare_json([one, two])
        assert document["jobs"] == ["job_1", "job_2"]
        assert document["differences"]["optimizer.momentum"] == [0.9, None]
        assert document["results"][1]["best"] == {"epoch": 1, "test_accuracy": 0.86}
