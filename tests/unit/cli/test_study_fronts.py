"""The client on a study of several objectives: `study show` prints the front as a table,
`study trials` a column per objective and the front marked, `study watch` each trial's
values, and `study plot` draws accuracy against parameters with the front marked (a PNG,
read back with Pillow)."""

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from rich.console import Console, RenderableType

from cli.client import studies
from cli.client.http_client import ApiClient
from cli.client.plots import FRONT_COLOUR, front_axes, plot_front
from cli.client.server_events import ServerEvent
from cli.client.study_views import event_line, study_view, summary_line, trials_table
from cli.main import main
from shared.study_spec import StudySpec

OBJECTIVES = [
    {"metric": "val_accuracy", "direction": "maximize"},
    {"metric": "parameters", "direction": "minimize"},
]
WIDTHS = [4, 8, 12, 16, 20, 24]


def study_json(**fields: Any) -> dict[str, Any]:
    body = {
        "name": "small-and-good",
        "base": {"epochs": 3},
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 24, "step": 4},
        },
        "objectives": OBJECTIVES,
        "sampler": {"name": "nsga2", "population_size": 4},
        "pruner": {"name": "pareto", "n_warmup_epochs": 1},
    }
    return {
        "id": "stu_2",
        "name": "small-and-good",
        "status": "succeeded",
        "spec": StudySpec.model_validate(body).model_dump(mode="json"),
        "created_at": "2026-12-01T10:00:00Z",
        "finished_at": "2026-12-01T10:03:00Z",
        "trials": {"total": 6, "succeeded": 5, "pruned": 1},
        "best": None,
        "pareto": [front_member(0), front_member(2)],
        "importances": None,
        "confirmed": None,
        "error": None,
        **fields,
    }


def trial_json(number: int, state: str = "succeeded", **fields: Any) -> dict[str, Any]:
    width = WIDTHS[number]
    return {
        "number": number,
        "state": state,
        "params": {"optimizer.lr": 0.05, "model.layers[0].out_channels": width},
        "value": None,
        "values": [round(0.9 + width / 1000 - (0.2 if number % 2 else 0.0), 4), 500.0 * width],
        "test_accuracy": 0.9,
        "pareto_rank": 0 if number in (0, 2) else 1,
        "epochs_completed": 3,
        "job_id": f"job_{number}",
        "reason": None,
        "confirms": None,
        "seed": 0,
        **fields,
    }


def front_member(number: int) -> dict[str, Any]:
    trial = trial_json(number)
    return {key: trial[key] for key in ("number", "job_id", "params", "values", "test_accuracy")}


def text_of(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=200, markup=False, highlight=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


class TestShow:
    def test_the_front_is_a_table_of_its_trials(self):
        text = text_of(study_view(study_json()))
        assert "objectives   maximize val_accuracy (best epoch)" in text
        assert "             minimize parameters" in text
        assert not [line for line in text.splitlines() if line.startswith("best")]
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("front"))
        assert lines[header].split()[1:] == [
            "trial",
            "val_accuracy",
            "parameters",
            "test_accuracy",
            "params",
        ]
        rows = [line.split() for line in lines[header + 2 :] if line.split()[:1] in (["0"], ["2"])]
        assert rows == [
            ["0", "0.9040", "2,000", "0.9000", "optimizer.lr=0.05"],
            ["2", "0.9120", "6,000", "0.9000", "optimizer.lr=0.05"],
        ]

    def test_no_front_yet(self):
        assert "front        none yet" in text_of(study_view(study_json(pareto=[])))

    def test_the_summary_names_the_front(self):
        line = str(summary_line(study_json()))
        assert line == (
            "study stu_2 succeeded; trials 6 total: 5 succeeded, 1 pruned; front of 2 trials: 0, 2"
        )


class TestTrials:
    def test_a_column_per_objective_and_the_front_marked(self):
        trials = [trial_json(0), trial_json(1, "pruned", epochs_completed=1, reason="pareto")]
        trials[1]["pareto_rank"] = None
        rows = text_of(trials_table(study_json(), trials)).splitlines()
        assert rows[0].split() == [
            "trial",
            "state",
            "val_accuracy",
            "parameters",
            "test_accuracy",
            "front",
            "epochs",
            "params",
            "reason",
        ]
        assert rows[2].split()[:7] == ["0", "succeeded", "0.9040", "2,000", "0.9000", "*", "3/3"]
        assert rows[4].split()[:6] == ["1", "pruned", "0.7080", "4,000", "0.9000", "1/3"]


class TestWatch:
    def test_each_trial_shows_every_objective(self):
        study = study_json()
        lines = [
            str(event_line(study, ServerEvent(name, trial)))
            for name, trial in [
                ("epoch", trial_json(0, "running", epochs_completed=1)),
                ("trial_finished", trial_json(0)),
                ("epoch", trial_json(1, "running", values=None, epochs_completed=0)),
            ]
        ]
        assert lines == [
            "trial 0 epoch 1/3: val_accuracy 0.9040, parameters 2,000",
            "trial 0 succeeded: val_accuracy 0.9040, parameters 2,000 after 3 epochs",
            "trial 1 epoch 0/3: val_accuracy —, parameters —",
        ]


def colour_pixels(path: Path, colour: str) -> int:
    wanted = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    with Image.open(path) as image:
        counts = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return sum(count for count, rgb in counts if rgb == wanted)


class TestPlot:
    def test_accuracy_against_parameters_with_the_front_marked(self, tmp_path):
        trials = [trial_json(n) for n in range(len(WIDTHS))]
        trials[5]["state"] = "pruned"
        study = study_json()
        drawn = tmp_path / "front.png"
        plot_front(OBJECTIVES, trials, study["pareto"], drawn, "front")
        with Image.open(drawn) as image:
            assert image.format == "PNG" and image.size == (700, 500)
        assert colour_pixels(drawn, FRONT_COLOUR) > 100
        without = tmp_path / "no-front.png"
        plot_front(OBJECTIVES, trials, [], without, "front")
        assert colour_pixels(without, FRONT_COLOUR) == 0

    def test_x_is_the_static_objective_and_y_the_measured_one(self):
        assert front_axes(OBJECTIVES) == (1, 0)
        assert front_axes(list(reversed(OBJECTIVES))) == (0, 1)
        assert front_axes([{"metric": "val_accuracy"}, {"metric": "train_loss"}]) == (1, 0)

    def test_one_objective_has_no_front(self, tmp_path):
        with pytest.raises(ValueError, match="two objectives or more"):
            plot_front(OBJECTIVES[:1], [trial_json(0)], [], tmp_path / "x.png", "x")


def api_of(study: dict[str, Any], trials: list[dict[str, Any]]) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/trials"):
            assert request.url.params["order"] == "pareto"
            return httpx.Response(200, json={"study_id": study["id"], "items": trials})
        return httpx.Response(200, json=study)

    return ApiClient("http://tunelab.test", "k", transport=httpx.MockTransport(handler))


class TestPlotCommand:
    def test_writes_the_png(self, monkeypatch, tmp_path, capsys):
        trials = [trial_json(n) for n in range(len(WIDTHS))]
        monkeypatch.setattr(studies, "connect", lambda: api_of(study_json(), trials))
        output = tmp_path / "front.png"
        assert main(["study", "plot", "stu_2", "-o", str(output)]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {output}"
        assert colour_pixels(output, FRONT_COLOUR) > 100

    def test_a_study_of_one_objective_is_refused(self, monkeypatch, tmp_path, capsys):
        one = study_json()
        one["spec"]["objectives"] = None
        monkeypatch.setattr(studies, "connect", lambda: api_of(one, []))
        assert main(["study", "plot", "stu_2", "-o", str(tmp_path / "x.png")]) == 1
        assert "has one objective" in capsys.readouterr().err
        assert not (tmp_path / "x.png").exists()
