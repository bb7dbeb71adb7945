"""What the job commands show of a job that holds images out to validate on."""

import io

from PIL import Image
from rich.console import Console, RenderableType

from cli.client import checkpoints
from cli.client.job_views import compare_view, epoch_line, job_view, summary_line
from cli.client.plots import Curves, plot
from tests.unit.cli.jobs_json import checkpoint_json, job_json, row_json

VALIDATED_BEST = {"epoch": 1, "test_accuracy": 0.95, "val_accuracy": 0.9}


def text_of(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(renderable)
    return out.getvalue()


def validated_row(epoch: int) -> dict:
    return row_json(epoch, val_loss=0.3 / (epoch + 1), val_accuracy=0.8 + epoch / 50)


class TestViews:
    def test_an_epoch_line_names_the_validation_metrics_before_the_test_ones(self):
        line = epoch_line(validated_row(0), 2)
        assert "val_loss 0.3000 val_accuracy 0.8000 test_loss" in line

    def test_an_epoch_line_without_validation_is_as_before(self):
        assert "val_" not in epoch_line(row_json(0), 2)

    def test_the_summary_names_the_metric_that_chose_the_best_epoch(self):
        job = job_json(best=VALIDATED_BEST)
        assert "best val_accuracy 0.9000 at epoch 1 (test_accuracy 0.9500)" in str(
            summary_line(job)
        )

    def test_show_gives_the_best_epochs_validation_and_the_checkpoints_column(self):
        items = [checkpoint_json("job_1", 0, val_accuracy=0.88)]
        shown = text_of(job_view(job_json(best=VALIDATED_BEST, checkpoints=items)))
        assert "epoch 1: val_accuracy 0.9000, test_accuracy 0.9500" in shown
        assert "val_accuracy" in shown.split("checkpoints")[-1]
        assert "0.8800" in shown

    def test_compare_adds_a_row_for_the_best_validation_accuracy(self):
        shown = text_of(compare_view([job_json("job_1", best=VALIDATED_BEST), job_json("job_2")]))
        assert "best val_accuracy" in shown


class TestBestCheckpoint:
    def test_by_validation_accuracy_when_the_job_validated(self):
        listed = [
            checkpoint_json("job_1", 0, test_accuracy=0.99, val_accuracy=0.80),
            checkpoint_json("job_1", 1, test_accuracy=0.95, val_accuracy=0.90),
        ]
        assert checkpoints.pick("job_1", listed, best=True)["epoch"] == 1

    def test_by_test_accuracy_otherwise(self):
        listed = [
            checkpoint_json("job_1", 0, test_accuracy=0.99),
            checkpoint_json("job_1", 1, test_accuracy=0.95),
        ]
        assert checkpoints.pick("job_1", listed, best=True)["epoch"] == 0


def test_the_plot_draws_validation_curves(tmp_path):
    drawn = {}
    for name, rows in (
        ("with", [validated_row(0), validated_row(1)]),
        ("without", [row_json(0), row_json(1)]),
    ):
        drawn[name] = tmp_path / f"{name}.png"
        plot([Curves(job_json("job_1"), rows)], drawn[name])
    with Image.open(drawn["with"]) as with_validation, Image.open(drawn["without"]) as without:
        assert with_validation.size == without.size == (1500, 400)
        assert with_validation.tobytes() != without.tobytes()
