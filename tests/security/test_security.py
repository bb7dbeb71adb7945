"""Tenants and hostile input: each test asserts one promise and prints it as a figure
(`pytest tests/security -s` shows them).

Keys, isolation between tenants, path traversal against the download and the worker's
checkpoint post, planted pickles, oversized specs and bodies, the rate limit, the limit on
failed authentications and the concurrent-job limit, and what the database keeps of a key.
"""

import hashlib
import io
import logging
import math
import pickle
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import Session, select

from api.auth.keys import hash_key, revoke_key
from api.auth.rate_limit import RateLimiter
from api.core.models import CheckpointRow, Job
from api.workers.document import worker_document
from cli.main import main as tunelab
from testbed.services import REDIS_URL
from tests.availability import unavailable
from tests.figures import figure as report_figure
from tests.security.deployment import WORKER_TOKEN, Deployment, bearer
from tests.unit.api.tenant_calls import PROBLEM, QUICK_JOB
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record

SECRET = b"TOP SECRET: another tenant's weights"
# Tests that send many bad credentials on purpose lift the limit on failed authentications, so
# each one is answered 401 as the test means; TestFailedAuthentication covers that limit.
MANY_FAILURES = {"failed_auth_per_minute": 10_000}


def figure(line: str) -> None:
    report_figure(f"[security] {line}")


def operations(deployment: Deployment, prefix: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every operation under `prefix` in openapi.json."""
    # The worker routes have a document of their own; the public one leaves them out.
    schema = (
        worker_document()
        if prefix.startswith("/internal")
        else deployment.client.get("/openapi.json").json()
    )
    found = [
        (method.upper(), path, operation)
        for path, methods in schema["paths"].items()
        if path.startswith(prefix)
        for method, operation in methods.items()
    ]
    assert found, f"no operations under {prefix}"
    return found


def fill(template: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: values.get(match[1], "unknown"), template)


def plausible_body(path: str, operation: dict[str, Any]) -> dict[str, Any] | None:
    """A body that would pass validation, so only the credentials decide the answer."""
    if "requestBody" not in operation:
        return None
    return {"/v1/jobs": QUICK_JOB, "/v1/architectures/analyze": {"preset": "baseline"}}.get(
        path, {}
    )


class TestAuthentication:
    def test_every_v1_operation_refuses_requests_without_a_valid_key(self, make_deployment):
        deployment = make_deployment(**MANY_FAILURES)
        owner = deployment.tenant("acme")
        job, checkpoint = deployment.trained_job(owner)
        revoked = deployment.new_key("acme")
        with Session(deployment.engine) as session:
            assert revoke_key(session, revoked.split("_")[1])
        real_prefix = deployment.new_key("acme").split("_")[1]
        credentials: dict[str, dict[str, str]] = {
            "none": {},
            "empty bearer": {"Authorization": "Bearer "},
            "not a key": bearer("not-a-key"),
            "forged secret, real prefix": bearer(f"tlk_{real_prefix}_{secrets.token_urlsafe(24)}"),
            "revoked key": bearer(revoked),
            "worker token": bearer(WORKER_TOKEN),
            "basic scheme": {"Authorization": "Basic YWNtZTpzZWNyZXQ="},
        }
        ops = operations(deployment, "/v1/")
        accepted, sent, control_accepted = [], 0, 0
        for method, template, operation in ops:
            url = fill(template, job_id=job["id"], name=checkpoint)
            body = plausible_body(template, operation)
            for label, headers in credentials.items():
                response = deployment.client.request(method, url, json=body, headers=headers)
                sent += 1
                if response.status_code != 401:
                    accepted.append((method, template, label, response.status_code))
                else:
                    assert response.headers["content-type"] == PROBLEM
                    assert response.headers["www-authenticate"] == "Bearer"
            # The control: the owner's key gets through, so the 401s above are the key's doing.
            response = deployment.client.request(method, url, json=body, headers=owner)
            control_accepted += response.status_code != 401
        figure(
            f"unauthenticated: {len(ops)} /v1 operations x {len(credentials)} kinds of bad "
            f"credentials = {sent} requests / {len(accepted)} accepted "
            f"(control: the owner's key passes on {control_accepted}/{len(ops)})"
        )
        assert accepted == []
        assert control_accepted == len(ops)

    def test_worker_routes_need_the_worker_token_and_the_attempt_they_claimed(
        self, make_deployment
    ):
        deployment = make_deployment(**MANY_FAILURES)
        tenant = deployment.tenant("acme")
        held = deployment.submit(tenant)
        other = deployment.submit(tenant)
        attempt = deployment.worker.attempt(held["id"], "node-1")
        # Another worker holds attempt 1 of another job: same attempt number, its own lease.
        deployment.worker.attempt(other["id"], "node-2")
        ops = operations(deployment, "/internal/")
        wrong_credentials = {
            "none": {},
            "tenant key": tenant,
            "wrong token": bearer(WORKER_TOKEN + "x"),
        }
        accepted, sent = [], 0
        for method, template, _ in ops:
            url = fill(template, job_id=held["id"])
            for label, headers in wrong_credentials.items():
                response = deployment.client.request(method, url, json=attempt, headers=headers)
                sent += 1
                if response.status_code != 401:
                    accepted.append((method, template, label, response.status_code))
        # With the worker token, a lease reaches only the job and attempt it was granted for.
        foreign_posts = [
            deployment.worker.post_epoch(other["id"], attempt, 0),
            deployment.worker.heartbeat(other["id"], attempt),
            deployment.worker.finish(other["id"], attempt),
            deployment.worker.post_epoch(held["id"], {**attempt, "attempt": 2}, 0),
            deployment.worker.post_epoch(held["id"], {**attempt, "lease_token": "0" * 32}, 0),
        ]
        foreign_accepted = [r.status_code for r in foreign_posts if r.status_code != 409]
        figure(
            f"worker routes: {len(ops)} operations x {len(wrong_credentials)} wrong credentials "
            f"= {sent} requests / {len(accepted)} accepted; posts for a job or attempt the "
            f"lease was not granted for: {len(foreign_posts)} / {len(foreign_accepted)} accepted"
        )
        assert accepted == []
        assert foreign_accepted == []
        assert deployment.worker.post_epoch(held["id"], attempt, 0).status_code == 200

    def test_a_key_revoked_with_the_cli_is_refused_on_the_next_request(
        self, deployment, monkeypatch, capsys
    ):
        key = deployment.new_key("acme")
        assert deployment.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        monkeypatch.setenv("TUNELAB_DATABASE_URL", deployment.settings.database_url)
        _, prefix, secret = key.split("_", 2)
        assert tunelab(["keys", "list"]) == 0
        listed = capsys.readouterr().out
        assert tunelab(["keys", "revoke", prefix]) == 0
        capsys.readouterr()
        status = deployment.client.get("/v1/jobs", headers=bearer(key)).status_code
        figure(
            f"revocation: after `tunelab keys revoke {prefix}` the next request is {status}; "
            f"`tunelab keys list` shows the prefix: {prefix in listed}, the secret: "
            f"{secret in listed}"
        )
        assert prefix in listed
        assert secret not in listed
        assert status == 401

    def test_keys_carry_at_least_128_random_bits_behind_a_visible_prefix(self, deployment):
        keys = [deployment.new_key("acme") for _ in range(50)]
        shape = re.compile(r"^tlk_[0-9a-f]{8}_[A-Za-z0-9_-]{32}$")
        secret_bits = min(len(key.split("_", 2)[2]) * 6 for key in keys)
        figure(
            f"keys: {len(keys)} made, {len(set(keys))} distinct, "
            f"{secret_bits} random bits each after the prefix"
        )
        assert all(shape.match(key) for key in keys)
        assert len(set(keys)) == len(keys)
        assert secret_bits >= 128


class TestIsolation:
    def test_another_tenants_job_is_not_found_on_any_route(self, deployment):
        owner, intruder = deployment.tenant("acme"), deployment.tenant("globex")
        finished, checkpoint = deployment.trained_job(owner)
        running, running_checkpoint = deployment.trained_job(owner, finish=False)
        ops = [op for op in operations(deployment, "/v1/") if "{job_id}" in op[1]]

        def request(method: str, template: str, operation: dict, headers: dict) -> Any:
            # A wrongly served event stream of a running job would never end: use the finished one.
            job, name = (
                (finished, checkpoint)
                if template.endswith("/events")
                else (running, running_checkpoint)
            )
            url = fill(template, job_id=job["id"], name=name)
            body = plausible_body(template, operation)
            return deployment.client.request(method, url, json=body, headers=headers)

        refused, accepted = 0, []
        for method, template, operation in ops:
            response = request(method, template, operation, intruder)
            if response.status_code == 404 and response.headers["content-type"] == PROBLEM:
                refused += 1
            else:
                accepted.append((method, template, response.status_code))
        listed = deployment.client.get("/v1/jobs", headers=intruder).json()["items"]
        listed += deployment.client.get(
            "/v1/jobs", params={"status": "running"}, headers=intruder
        ).json()["items"]
        leaked = [item["id"] for item in listed if item["id"] in (finished["id"], running["id"])]
        still = deployment.client.get(f"/v1/jobs/{running['id']}", headers=owner).json()
        figure(
            f"cross-tenant: {len(ops)} routes with another tenant's job id / {len(accepted)} "
            f"accepted ({refused} answered 404); the other tenant's list shows {len(leaked)} "
            f"of its jobs; its running job is still {still['status']}"
        )
        assert accepted == []
        assert leaked == []
        assert still["status"] == "running"
        # The owner reaches every one of them; deleting the running job is refused for its
        # state, not because it was not found.
        for method, template, operation in ops:
            response = request(method, template, operation, owner)
            expected = 409 if method == "DELETE" else 200
            assert response.status_code == expected, (method, template, response.text)


def files_outside(deployment: Deployment) -> dict[Path, bytes]:
    """Every file of the deployment's folder outside its artifact root, with its bytes;
    the database's own files change with every query and are left out."""
    root = deployment.artifact_root
    database = Path(deployment.settings.database_url.removeprefix("sqlite:///"))
    return {
        path: path.read_bytes()
        for path in root.parent.rglob("*")
        if path.is_file()
        and not path.is_relative_to(root)
        and not path.name.startswith(database.name)
    }


DOWNLOAD_CORPUS = [
    "../../outside-secret.pt",
    "../../../../../../etc/passwd",
    "..%2F..%2Foutside-secret.pt",
    "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2foutside-secret.pt",
    "%252e%252e%252f%252e%252e%252foutside-secret.pt",
    "..%c0%af..%c0%afoutside-secret.pt",
    "....%2F%2F....%2F%2Foutside-secret.pt",
    "..\\..\\outside-secret.pt",
    "..%5C..%5Coutside-secret.pt",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "%2F{outside}",
    "epoch-000.pt%00.txt",
    "%00",
    "..%00%2F..%00%2Foutside-secret.pt",
]


class TestTraversal:
    def test_the_download_serves_nothing_from_outside_the_artifact_root(self, deployment):
        owner = deployment.tenant("acme")
        job, checkpoint = deployment.trained_job(owner)
        root = deployment.artifact_root
        secret_path = root.parent / "outside-secret.pt"
        secret_path.write_bytes(SECRET)
        outside_folder = root.parent / "outside-folder"
        outside_folder.mkdir()
        (outside_folder / "epoch-000.pt").write_bytes(SECRET)

        # Rows a worker could not record through the API, planted as if the ledger or the
        # disk had been tampered with: the download must still stay inside the root.
        (root / job["id"] / "linked.pt").symlink_to(secret_path)
        linked_folder_job = deployment.submit(owner)
        (root / linked_folder_job["id"]).symlink_to(outside_folder, target_is_directory=True)
        planted = {
            "parent.pt": (job["id"], "../outside-secret.pt"),
            "absolute.pt": (job["id"], str(secret_path)),
            "linked.pt": (job["id"], f"{job['id']}/linked.pt"),
            "epoch-000.pt": (linked_folder_job["id"], f"{linked_folder_job['id']}/epoch-000.pt"),
        }
        with Session(deployment.engine) as session:
            for name, (job_id, path) in planted.items():
                session.add(
                    CheckpointRow(
                        job_id=job_id,
                        name=name,
                        path=path,
                        epoch=0,
                        attempt=1,
                        sha256="0" * 64,
                        bytes=len(SECRET),
                    )
                )
            session.commit()

        attempts: list[tuple[str, int, bytes]] = []
        for name in DOWNLOAD_CORPUS:
            name = name.replace("{outside}", str(secret_path).lstrip("/").replace("/", "%2F"))
            for job_id in (job["id"], linked_folder_job["id"]):
                raw = f"/v1/jobs/{job_id}/checkpoints/{name}".encode()
                attempts.append((name, *deployment.send_raw("GET", raw, owner)))
        for name, (job_id, _) in planted.items():
            response = deployment.client.get(f"/v1/jobs/{job_id}/checkpoints/{name}", headers=owner)
            attempts.append((name, response.status_code, response.content))
        for job_segment in ("..%2F..%2F", "..", "%2e%2e", job["id"] + "%2F..%2F.."):
            raw = f"/v1/jobs/{job_segment}/checkpoints/outside-secret.pt".encode()
            attempts.append((job_segment, *deployment.send_raw("GET", raw, owner)))

        served = [
            (name, status) for name, status, body in attempts if status == 200 or SECRET in body
        ]
        server_errors = [(name, status) for name, status, _ in attempts if status >= 500]
        control = deployment.client.get(
            f"/v1/jobs/{job['id']}/checkpoints/{checkpoint}", headers=owner
        )
        figure(
            f"traversal (download): {len(attempts)} attempts (../, URL-encoded, double-encoded, "
            f"absolute, backslash, NUL, symlinked file and folder, planted rows) / "
            f"{len(served)} files served from outside the root, {len(server_errors)} 5xx "
            f"(control, the recorded checkpoint: {control.status_code})"
        )
        assert served == []
        assert server_errors == []
        assert control.status_code == 200
        assert control.content == (root / job["id"] / checkpoint).read_bytes()

    def test_a_worker_cannot_record_a_checkpoint_outside_the_job_folder(self, deployment):
        owner = deployment.tenant("acme")
        job = deployment.submit(owner)
        neighbour = deployment.submit(owner)
        attempt = deployment.worker.attempt(job["id"])
        root = deployment.artifact_root
        outside = root.parent / "outside.pt"
        job_id = job["id"]
        corpus = [
            ("../outside.pt", f"{job_id}/../outside.pt"),
            ("outside.pt", "../outside.pt"),
            ("outside.pt", f"{job_id}/../../outside.pt"),
            ("outside.pt", f"{job_id}/%2e%2e/%2e%2e/outside.pt"),
            ("%2e%2e%2foutside.pt", f"{job_id}/%2e%2e%2foutside.pt"),
            ("passwd", "/etc/passwd"),
            ("outside.pt", str(outside)),
            ("..\\..\\outside.pt", f"{job_id}/..\\..\\outside.pt"),
            ("outside.pt", f"{job_id}\\..\\..\\outside.pt"),
            ("outside\x00.pt", f"{job_id}/outside\x00.pt"),
            ("outside.pt", f"{job_id}/outside.pt\x00/../../outside.pt"),
            (".hidden.pt", f"{job_id}/.hidden.pt"),
            ("outside.pt", f"{neighbour['id']}/outside.pt"),
            ("outside.pt", f"{job_id}//outside.pt"),
            ("outside.pt", f"./{job_id}/outside.pt"),
        ]
        before = files_outside(deployment)
        accepted = []
        for epoch, (name, path) in enumerate(corpus):
            record = {**checkpoint_record(job_id, epoch), "name": name, "path": path}
            response = deployment.worker.post_epoch(job_id, attempt, epoch, checkpoint=record)
            if response.status_code < 300 or response.status_code >= 500:
                accepted.append((name, path, response.status_code))
        with Session(deployment.engine) as session:
            recorded = session.exec(select(CheckpointRow)).all()
        after = files_outside(deployment)
        written = {path for path in after if before.get(path) != after[path]}
        files_in_root = list(root.rglob("*"))
        figure(
            f"traversal (worker checkpoint post): {len(corpus)} posts / {len(accepted)} accepted, "
            f"{len(recorded)} recorded, {len(written)} files written outside the root"
        )
        assert accepted == []
        assert recorded == []
        assert written == set()
        assert files_in_root == []
        # The refusals did not end the attempt: a proper checkpoint is still recorded.
        proper = deployment.worker.uploaded_checkpoint(job_id, attempt, 0)
        assert (
            deployment.worker.post_epoch(job_id, attempt, 0, checkpoint=proper).status_code == 200
        )


class SideEffect:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class TestPlantedCheckpoints:
    def test_a_pickle_planted_as_a_checkpoint_never_runs(self, tmp_path):
        torch = pytest.importorskip("torch")
        from worker.training.checkpoints import CheckpointUnusable, load_checkpoint

        marker = tmp_path / "side-effect"
        plain = pickle.dumps(SideEffect(marker))
        zipped = io.BytesIO()
        torch.save({"model": SideEffect(marker)}, zipped)
        planted = {"pickle.pt": plain, "torch-zip.pt": zipped.getvalue()}
        refused = 0
        for name, payload in planted.items():
            path = tmp_path / name
            path.write_bytes(payload)
            # The hash matches, as if the file had been recorded: only the loader stands between.
            with pytest.raises(CheckpointUnusable):
                load_checkpoint(path, hashlib.sha256(payload).hexdigest())
            refused += 1
        side_effects = int(marker.exists())

        # The control: the same bytes do run their code when unpickled without restriction.
        control_marker = tmp_path / "control-side-effect"
        pickle.loads(pickle.dumps(SideEffect(control_marker))).close()
        figure(
            f"planted pickle: {len(planted)} checkpoints with a matching SHA-256 loaded / "
            f"{refused} refused, side effects {side_effects} "
            f"(control, plain pickle.loads: {int(control_marker.exists())})"
        )
        assert side_effects == 0
        assert control_marker.exists()

    def test_a_checkpoint_is_loaded_only_when_its_sha256_matches(self, tmp_path):
        torch = pytest.importorskip("torch")
        from worker.training.checkpoints import CheckpointUnusable, load_checkpoint

        buffer = io.BytesIO()
        torch.save({"weights": torch.zeros(3)}, buffer)
        path = tmp_path / "epoch-000.pt"
        path.write_bytes(buffer.getvalue())
        good = hashlib.sha256(buffer.getvalue()).hexdigest()
        assert torch.equal(load_checkpoint(path, good)["weights"], torch.zeros(3))
        with pytest.raises(CheckpointUnusable):
            load_checkpoint(path, "0" * 64)
        with pytest.raises(CheckpointUnusable):
            load_checkpoint(tmp_path / "missing.pt", good)


def oversized_specs(limits: Any) -> dict[str, tuple[dict[str, Any], str]]:
    """(body, the field the 422 must name) for each limit, just past it."""
    channels = limits.max_channels
    head = [{"type": "gap"}, {"type": "linear", "out_features": 10}]
    wide_conv = {"type": "conv", "out_channels": channels, "kernel_size": 3, "padding": 1}
    return {
        "epochs": ({"epochs": limits.max_epochs + 1}, "epochs"),
        "epochs, 10**40": ({"epochs": 10**40}, "epochs"),
        "batch size": ({"batch_size": limits.max_batch_size + 1}, "batch_size"),
        "batch size schedule": (
            {
                "epochs": 2,
                "batch_size_schedule": [{"epoch": 0, "batch_size": limits.max_batch_size + 1}],
            },
            "batch_size_schedule[0].batch_size",
        ),
        "conv channels": (
            {"model": {"layers": [{"type": "conv", "out_channels": channels + 1}, *head]}},
            "model.layers[0].out_channels",
        ),
        "linear features": (
            {
                "model": {
                    "layers": [
                        {"type": "flatten"},
                        {"type": "linear", "out_features": channels + 1},
                        {"type": "linear", "out_features": 10},
                    ]
                }
            },
            "model.layers[1].out_features",
        ),
        "layers": (
            {
                "model": {
                    "layers": [
                        *[{"type": "conv", "out_channels": 8, "kernel_size": 1}]
                        * limits.max_layers,
                        *head,
                    ]
                }
            },
            "model.layers",
        ),
        "parameters": (
            {
                "model": {
                    "layers": [
                        {"type": "conv", "out_channels": channels, "kernel_size": 1},
                        {"type": "flatten"},
                        {"type": "linear", "out_features": channels},
                        {"type": "linear", "out_features": 10},
                    ]
                }
            },
            "model",
        ),
        "multiply-adds": (
            {"model": {"layers": [wide_conv, wide_conv, wide_conv, *head]}},
            "model",
        ),
        "lr range test steps": (
            {"kind": "lr_range_test", "lr_range_test": {"steps": 10**9}},
            "lr_range_test.steps",
        ),
        "train subset": ({"data": {"train_subset": 10**9}}, "data.train_subset"),
        "name": ({"name": "x" * 10_000}, "name"),
    }


class TestOversizedInput:
    def test_oversized_specs_are_422_naming_the_limit(self, deployment):
        tenant = deployment.tenant("acme")
        specs = oversized_specs(deployment.settings)
        answers = {
            label: deployment.client.post("/v1/jobs", json=body, headers=tenant)
            for label, (body, _) in specs.items()
        }
        analyzed = deployment.client.post(
            "/v1/architectures/analyze", json=specs["parameters"][0]["model"], headers=tenant
        )
        rejected = [label for label, response in answers.items() if response.status_code == 422]
        with Session(deployment.engine) as session:
            stored = len(session.exec(select(Job)).all())
        figure(
            f"oversized specs: {len(specs)} submitted / {len(rejected)} rejected with 422, "
            f"{stored} stored; analyze with too many parameters: {analyzed.status_code}"
        )
        for label, (_, field) in specs.items():
            response = answers[label]
            assert response.status_code == 422, (label, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert field in [error["field"] for error in response.json()["errors"]], label
        assert stored == 0
        assert analyzed.status_code == 422

    def test_bodies_over_the_limit_are_413_before_they_are_read(self, make_deployment):
        deployment = make_deployment(max_request_bytes=4096)
        tenant = deployment.tenant("acme")
        limit = deployment.settings.max_request_bytes
        padded = b'{"name": "' + b"x" * limit + b'"}'
        chunks_read = 0

        def streamed() -> Iterator[bytes]:
            nonlocal chunks_read
            for start in range(0, len(padded), 1024):
                chunks_read += 1
                yield padded[start : start + 1024]

        declared = deployment.client.post(
            "/v1/jobs", content=padded, headers={**tenant, "content-type": "application/json"}
        )
        chunked = deployment.client.post(
            "/v1/jobs", content=streamed(), headers={**tenant, "content-type": "application/json"}
        )
        unauthenticated = deployment.client.post(
            "/v1/jobs", content=padded, headers={"content-type": "application/json"}
        )
        worker = deployment.client.post(
            "/internal/v1/jobs/x/epochs",
            content=padded,
            headers={**bearer(WORKER_TOKEN), "content-type": "application/json"},
        )
        just_under = QUICK_JOB | {"name": "x" * 200}
        fits = deployment.client.post("/v1/jobs", json=just_under, headers=tenant)
        answers = [declared, chunked, unauthenticated, worker]
        figure(
            f"oversized bodies (limit {limit} bytes): {len(answers)} sent (declared length, "
            f"chunked, unauthenticated, worker route) / "
            f"{sum(r.status_code == 413 for r in answers)} refused with 413; "
            f"a body under the limit: {fits.status_code}"
        )
        for response in answers:
            assert response.status_code == 413, response.text
            assert response.headers["content-type"] == PROBLEM
            assert str(limit) in response.json()["detail"]
        # The streamed body was cut off soon after the limit, not read to its end.
        assert chunks_read <= limit // 1024 + 2
        assert fits.status_code == 201

    @pytest.mark.parametrize(
        "body",
        [
            b"[" * 50_000,
            b'{"name": "\xff\xfe"}',
            b'{"epochs": 1e999}',
            b"",
            b"null",
            b'{"model": ' * 3000,
        ],
        ids=["deep-nesting", "bad-utf8", "huge-float", "empty", "null", "deep-objects"],
    )
    def test_malformed_bodies_are_4xx(self, make_deployment, body):
        deployment = make_deployment(max_request_bytes=64 * 1024)
        tenant = deployment.tenant("acme")
        response = deployment.client.post(
            "/v1/jobs", content=body, headers={**tenant, "content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == PROBLEM


def burst(deployment: Deployment, headers: dict[str, str], count: int) -> list[Any]:
    return [deployment.client.get("/v1/jobs", headers=headers) for _ in range(count)]


def timed(send: Callable[[], list[Any]]) -> tuple[list[Any], float]:
    """The responses, and the seconds from just before the first was sent to after the last."""
    started = time.time()
    responses = send()
    return responses, time.time() - started


def retry_after_is_a_minute_from_the_first(retry_after: list[int], elapsed: float) -> bool:
    # The window's oldest request is the burst's first: one more fits a minute after it.
    return all(math.floor(60 - elapsed) <= seconds <= 60 for seconds in retry_after)


def check_burst(label: str, responses: list[Any], limit: int, elapsed: float) -> None:
    limited = [r for r in responses if r.status_code == 429]
    served = [r for r in responses if r.status_code == 200]
    server_errors = [r for r in responses if r.status_code >= 500]
    retry_after = sorted({int(r.headers["retry-after"]) for r in limited})
    figure(
        f"rate limit ({label}): burst of {len(responses)} at twice the limit of {limit}/min / "
        f"{len(served)} served, {len(limited)} answered 429 with Retry-After {retry_after} s, "
        f"{len(server_errors)} 5xx"
    )
    assert len(served) == limit
    assert len(limited) == limit
    assert server_errors == []
    assert retry_after_is_a_minute_from_the_first(retry_after, elapsed), (retry_after, elapsed)
    for response in limited:
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 429


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the machine's Redis, removed afterwards.
    Like the integration tests: without Redis this skips, unless CI is set."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        unavailable(f"Redis is not reachable at {REDIS_URL} ({error})", "the Redis rate limit")
    prefix = f"tunelab-test:{uuid.uuid4().hex}"
    yield prefix
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


class TestRateLimit:
    LIMIT = 20

    def test_in_process_limit_answers_429_with_retry_after(self, make_deployment):
        # No TUNELAB_RATE_LIMIT_URL: counted in this process.
        deployment = make_deployment(requests_per_minute=self.LIMIT)
        tenant = deployment.tenant("acme")
        responses, elapsed = timed(lambda: burst(deployment, tenant, 2 * self.LIMIT))
        check_burst("in process", responses, self.LIMIT, elapsed)
        # Another key has its own count.
        assert burst(deployment, deployment.tenant("acme"), 1)[0].status_code == 200

    def test_redis_limit_is_shared_by_api_processes(self, make_deployment, redis_prefix):
        def limiter() -> RateLimiter:
            return RateLimiter(
                REDIS_URL,
                requests_per_minute=self.LIMIT,
                failed_auth_per_minute=self.LIMIT,
                key_prefix=redis_prefix,
            )

        # Two API processes, one database, one Redis: the burst is split between them.
        first = make_deployment(rate_limiter=limiter(), requests_per_minute=self.LIMIT)
        second = make_deployment(rate_limiter=limiter(), same_database_as=first)
        key = first.tenant("acme")
        responses, elapsed = timed(
            lambda: [
                (first if index % 2 == 0 else second).client.get("/v1/jobs", headers=key)
                for index in range(2 * self.LIMIT)
            ]
        )
        check_burst("Redis, two API processes", responses, self.LIMIT, elapsed)
        assert second.client.get("/v1/jobs", headers=first.tenant("acme")).status_code == 200

    def test_an_unreachable_redis_lets_requests_through(self, make_deployment, caplog):
        # Nothing listens on port 1; the limiter fails open and says so in the log.
        limiter = RateLimiter(
            "redis://127.0.0.1:1/0",
            requests_per_minute=2,
            failed_auth_per_minute=2,
            timeout_seconds=0.2,
        )
        deployment = make_deployment(rate_limiter=limiter, requests_per_minute=2)
        tenant = deployment.tenant("acme")
        with caplog.at_level(logging.WARNING, logger="api.auth.rate_limit"):
            started = time.monotonic()
            responses = burst(deployment, tenant, 10)
            elapsed = time.monotonic() - started
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        figure(
            f"rate limit (Redis unreachable): {len(responses)} requests / "
            f"{sum(r.status_code == 200 for r in responses)} served, "
            f"{sum(r.status_code >= 500 for r in responses)} 5xx, {len(warnings)} warning logged, "
            f"{elapsed:.1f} s in all"
        )
        assert [r.status_code for r in responses] == [200] * len(responses)
        # One failed connection, then Redis is left alone for a while: one warning, no stall.
        assert len(warnings) == 1


def invalid_key() -> str:
    return f"tlk_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"


class CountedQueries:
    """Counts the SQL statements an engine runs while `counting` is set."""

    def __init__(self, deployment: Deployment) -> None:
        self.engine = deployment.engine
        self.counting = False
        self.count = 0
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.count += self.counting

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


class TestFailedAuthentication:
    LIMIT = 30

    def test_a_flood_of_invalid_keys_from_one_address_is_refused_before_any_lookup(
        self, make_deployment
    ):
        deployment = make_deployment(failed_auth_per_minute=self.LIMIT)
        owner = deployment.tenant("acme")
        job = deployment.submit(owner)
        queries = CountedQueries(deployment)

        def flood() -> list[Any]:
            responses = []
            for _ in range(100):
                # Once the address is over the limit, no answer may cost a database query.
                queries.counting = len(responses) >= self.LIMIT
                responses.append(deployment.client.get("/v1/jobs", headers=bearer(invalid_key())))
            queries.counting = False
            return responses

        responses, elapsed = timed(flood)
        queries.remove()
        statuses = [r.status_code for r in responses]
        limited = [r for r in responses if r.status_code == 429]
        retry_after = sorted({int(r.headers["retry-after"]) for r in limited})
        server_errors = sum(status >= 500 for status in statuses)
        # The address is refused whatever it sends, a valid key included; another address,
        # and the worker token from this one, are not held back.
        same_address = deployment.client.get("/v1/jobs", headers=owner)
        elsewhere = TestClient(deployment.app, client=("198.51.100.7", 50000))
        try:
            other_address = elsewhere.get("/v1/jobs", headers=owner)
        finally:
            elsewhere.close()
        worker = deployment.worker.claim(job["id"])
        figure(
            f"failed auth: {len(responses)} requests with invalid keys / "
            f"{statuses.count(401)} answered 401, {len(limited)} answered 429 with Retry-After "
            f"{retry_after} s, {server_errors} 5xx; {queries.count} database queries for the "
            f"429s; then a valid key from that address {same_address.status_code}, from "
            f"another {other_address.status_code}, the worker token {worker.status_code}"
        )
        assert statuses == [401] * self.LIMIT + [429] * (len(responses) - self.LIMIT)
        assert server_errors == 0
        assert retry_after_is_a_minute_from_the_first(retry_after, elapsed), (retry_after, elapsed)
        for response in limited:
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["status"] == 429
        assert queries.count == 0
        assert same_address.status_code == 429
        assert int(same_address.headers["retry-after"]) >= 1
        assert other_address.status_code == 200
        assert worker.status_code == 200

    def test_wrong_worker_tokens_from_one_address_are_refused_past_the_limit(self, make_deployment):
        deployment = make_deployment(failed_auth_per_minute=self.LIMIT)
        job = deployment.submit(deployment.tenant("acme"))
        wrong = [
            WorkerCalls(deployment.client, bearer(secrets.token_urlsafe(24))).claim(job["id"])
            for _ in range(self.LIMIT + 10)
        ]
        statuses = [r.status_code for r in wrong]
        # The right token is refused too while the address is over the limit.
        right = deployment.worker.claim(job["id"])
        figure(
            f"failed auth (worker token): {len(wrong)} wrong tokens / {statuses.count(401)} "
            f"answered 401, {statuses.count(429)} answered 429; then the right token "
            f"{right.status_code}"
        )
        assert statuses == [401] * self.LIMIT + [429] * 10
        assert all(int(r.headers["retry-after"]) >= 1 for r in wrong[self.LIMIT :])
        assert right.status_code == 429


class TestConcurrentJobs:
    def test_a_tenant_at_its_limit_gets_429_but_replays_still_answer(self, make_deployment):
        deployment = make_deployment(max_concurrent_jobs=3)
        tenant = deployment.tenant("acme")
        first = deployment.client.post(
            "/v1/jobs", json=QUICK_JOB, headers={**tenant, "Idempotency-Key": "first"}
        )
        assert first.status_code == 201
        running = deployment.submit(tenant)
        deployment.worker.attempt(running["id"])
        deployment.submit(tenant)
        over = deployment.client.post("/v1/jobs", json=QUICK_JOB, headers=tenant)
        replay = deployment.client.post(
            "/v1/jobs", json=QUICK_JOB, headers={**tenant, "Idempotency-Key": "first"}
        )
        others = deployment.client.post(
            "/v1/jobs", json=QUICK_JOB, headers=deployment.tenant("globex")
        )
        problem = over.json()
        figure(
            f"concurrent jobs: limit 3 (queued + running), 4th submission {over.status_code} "
            f"with Retry-After {over.headers.get('retry-after')} s "
            f"({problem.get('active_jobs')} active, limit {problem.get('limit')}); "
            f"idempotent replay {replay.status_code}; another tenant {others.status_code}"
        )
        assert over.status_code == 429
        assert over.headers["content-type"] == PROBLEM
        assert int(over.headers["retry-after"]) > 0
        assert (problem["active_jobs"], problem["limit"]) == (3, 3)
        assert "3" in problem["detail"]
        assert replay.status_code == 200
        assert replay.json()["id"] == first.json()["id"]
        assert others.status_code == 201
        # A cancelled job frees its slot.
        deployment.client.post(f"/v1/jobs/{running['id']}/cancel", headers=tenant)
        assert deployment.client.post("/v1/jobs", json=QUICK_JOB, headers=tenant).status_code == 201


class TestSecretsAtRest:
    def test_the_database_holds_no_plaintext_key(self, deployment):
        keys = [deployment.new_key(f"tenant-{index % 3}") for index in range(6)]
        for key in keys:
            assert deployment.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        deployment.engine.dispose()
        database = Path(deployment.settings.database_url.removeprefix("sqlite:///"))
        # Every byte on disk, WAL included, and every value of every column.
        raw = b"".join(
            path.read_bytes()
            for path in database.parent.glob(database.name + "*")
            if path.is_file()
        )
        connection = sqlite3.connect(database)
        try:
            tables = [
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            values = [
                str(value)
                for table in tables
                for row in connection.execute(f'SELECT * FROM "{table}"')
                for value in row
            ]
            hashes = {row[0] for row in connection.execute("SELECT key_hash FROM api_keys")}
        finally:
            connection.close()
        secrets_of = [key.split("_", 2)[2] for key in keys]
        plaintext_on_disk = sum(secret.encode() in raw for secret in secrets_of)
        plaintext_in_columns = sum(
            any(secret in value for value in values) for secret in secrets_of
        )
        figure(
            f"database: {len(keys)} keys made and used / {plaintext_on_disk} plaintext keys in "
            f"the database files, {plaintext_in_columns} in any column; "
            f"{len(hashes & {hash_key(key) for key in keys})} stored as SHA-256"
        )
        assert plaintext_on_disk == 0
        assert plaintext_in_columns == 0
        assert {hash_key(key) for key in keys} <= hashes
