"""The study commands' output, from the API's JSON: `study show`, the `study trials` table and
`study watch` following an event stream (played by httpx.MockTransport)."""

import io
import json
from typing import Any

import httpx
from rich.console import Console, RenderableType

from cli.client.http_client import ApiClient
from cli.client.server_events import ServerEvent
from cli.client.study_views import event_line, study_view, trials_table
from cli.client.study_watch import follow
from shared.study_spec import StudySpec


def study_json(**fields: Any) -> dict[str, Any]:
    body = {
        "name": "lr-batch",
        "base": {"epochs": 2},
        "space": {
            "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "model.layers[0].out_channels": {"type": "int", "low": 4, "high": 8},
        },
        "pruner": {"name": "asha"},
        "confirm": {"top_k": 1, "seeds": 1, "refit": False},
    }
    counts = {"total": 3, "succeeded": 2, "pruned": 1}
    return {
        "id": "stu_1",
        "name": "lr-batch",
        "status": "succeeded",
        "spec": StudySpec.model_validate(body).model_dump(mode="json"),
        "created_at": "2026-12-01T10:00:00Z",
        "finished_at": "2026-12-01T10:01:05Z",
        "trials": {"queued": 0, "running": 0, "infeasible": 0, "failed": 0, **counts},
        "best": {
            "trial": 0,
            "job_id": "job_0",
            "params": {"optimizer.lr": 0.05, "model.layers[0].out_channels": 8},
            "value": 0.9512,
            "test_accuracy": 0.9431,
        },
        "importances": {"optimizer.lr": 0.75, "model.layers[0].out_channels": 0.25},
        "confirmed": [
            {
                "trial": 0,
                "params": {"optimizer.lr": 0.05, "model.layers[0].out_channels": 8},
                "mean": 0.95,
                "std": 0.0017,
                "n": 2,
                "values": [0.9512, 0.9488],
                "job_ids": ["job_0", "job_2"],
            }
        ],
        "error": None,
        **fields,
    }


def trial_json(number: int, state: str, **fields: Any) -> dict[str, Any]:
    return {
        "number": number,
        "state": state,
        "params": {"optimizer.lr": 0.05, "model.layers[0].out_channels": 8},
        "value": None,
        "epochs_completed": 0,
        "job_id": f"job_{number}",
        "reason": None,
        "confirms": None,
        "seed": 0,
        **fields,
    }


def text_of(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=200, markup=False, highlight=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


class TestShow:
    def test_a_finished_study_in_full(self):
        text = text_of(study_view(study_json()))
        assert text.splitlines()[0] == "study stu_1  lr-batch  succeeded"
        assert "finished     2026-12-01 10:01:05 UTC (after 1m 05s)" in text
        assert "objective    maximize val_accuracy (best epoch)" in text
        assert "trials       3 total: 2 succeeded, 1 pruned" in text
        assert "best         trial 0: val_accuracy 0.9512 (test_accuracy 0.9431)" in text
        # A path with brackets is data, not rich markup.
        assert "model.layers[0].out_channels = 8" in text
        assert "optimizer.lr                  0.75" in text
        assert "0.9500 ± 0.0017" in text

    def test_refit_runs_show_their_test_accuracy_in_the_order_chosen(self):
        study = study_json(
            confirmed=[
                {
                    "trial": 0,
                    "params": {"optimizer.lr": 0.05, "model.layers[0].out_channels": 8},
                    "parameters": 7342,
                    "n": 3,
                    "job_ids": ["job_3", "job_4", "job_5"],
                    "test_mean": 0.9941,
                    "test_std": 0.0004,
                    "test_min_last3": 0.9932,
                    "test_values": [0.9941, 0.9937, 0.9945],
                }
            ],
            warm_trials=12,
        )
        study["spec"]["confirm"]["refit"] = True
        study["spec"]["warm_start"] = {"study_id": "stu_0"}
        text = text_of(study_view(study))
        header = next(line for line in text.splitlines() if "test mean ± std" in line)
        assert "min last 3" in header and "parameters" in header
        assert "0.9941 ± 0.0004" in text and "0.9932" in text and "7,342" in text
        assert "warm start   12 finished trials of stu_0" in text

    def test_a_study_just_created(self):
        study = study_json(
            status="queued", finished_at=None, best=None, importances=None, confirmed=None
        )
        study["trials"] = {"total": 0}
        text = text_of(study_view(study))
        assert "finished" not in text
        assert "trials       0 total" in text
        assert "best         none yet" in text
        assert "confirmed    not yet" in text


class TestTrials:
    def test_a_row_per_trial_with_its_epochs_and_reason(self):
        trials = [
            trial_json(0, "succeeded", value=0.9512, test_accuracy=0.9431, epochs_completed=2),
            trial_json(1, "pruned", value=0.31, epochs_completed=1, reason="stopped by asha"),
            trial_json(2, "succeeded", value=0.9488, epochs_completed=2, confirms=0, seed=5),
        ]
        rows = text_of(trials_table(study_json(), trials)).splitlines()
        assert rows[0].split() == [
            "trial",
            "state",
            "val_accuracy",
            "test_accuracy",
            "epochs",
            "params",
            "reason",
        ]
        assert rows[2].split()[:5] == ["0", "succeeded", "0.9512", "0.9431", "2/2"]
        assert "stopped by asha" in rows[4]
        assert "confirms trial 0, seed 5" in "\n".join(rows)


class TestWatch:
    def test_lines_per_event(self):
        study = study_json()
        lines = [
            event_line(study, ServerEvent(name, trial))
            for name, trial in [
                ("trial_queued", trial_json(0, "queued")),
                ("epoch", trial_json(0, "running", value=0.8, epochs_completed=1)),
                ("trial_finished", trial_json(0, "succeeded", value=0.9, epochs_completed=2)),
                ("trial_pruned", trial_json(1, "pruned", epochs_completed=1, reason="asha")),
                ("trial_finished", trial_json(2, "infeasible", reason="too big")),
            ]
        ]
        assert [str(line) for line in lines] == [
            "trial 0 queued: optimizer.lr=0.05, model.layers[0].out_channels=8",
            "trial 0 epoch 1/2: val_accuracy 0.8000",
            "trial 0 succeeded: val_accuracy 0.9000 after 2 epochs",
            "trial 1 pruned: asha",
            "trial 2 infeasible: too big",
        ]

    def test_follow_reconnects_prints_each_event_once_and_exits_by_the_status(self):
        first = [("trial_queued", trial_json(0, "queued"))]
        second = [
            ("trial_queued", trial_json(0, "queued")),
            ("trial_finished", trial_json(0, "failed", reason="boom")),
            ("status", {"status": "failed"}),
        ]
        streams = iter([first, second])

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                frames = next(streams)
                body = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in frames)
                return httpx.Response(200, text=body)
            return httpx.Response(200, json=study_json(status="failed"))

        out = io.StringIO()
        api = ApiClient("http://tunelab.test", "k", transport=httpx.MockTransport(handler))
        with api:
            code = follow(api, "stu_1", Console(file=out, width=200))
        lines = out.getvalue().splitlines()
        assert code == 1
        assert lines[0] == "trial 0 queued: optimizer.lr=0.05, model.layers[0].out_channels=8"
        assert lines[1] == "tunelab: the event stream dropped; reconnecting"
        assert lines[2] == "trial 0 failed: boom"
        assert lines[3].startswith("study stu_1 failed; trials 3 total")
        assert len(lines) == 4
