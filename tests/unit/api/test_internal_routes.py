from tests.unit.api.tenant_calls import submit
from tests.unit.api.worker_calls import WorkerCalls, checkpoint_record


class TestWorkerAuth:
    def test_worker_routes_need_the_worker_token(self, client, auth):
        job = submit(client, auth)
        for headers in ({}, auth, {"Authorization": "Bearer wrong"}):
            response = WorkerCalls(client, headers).claim(job["id"])
            assert response.status_code == 401


class TestClaim:
    def test_claim_starts_attempt_one_and_hands_over_the_spec(self, client, auth, worker_auth):
        job = submit(client, auth)
        claim = WorkerCalls(client, worker_auth).claim(job["id"], "gpu-node-3").json()
        assert claim["attempt"] == 1
        assert claim["spec"] == job["spec"]
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert (fetched["status"], fetched["worker"], fetched["attempts"]) == (
            "running",
            "gpu-node-3",
            1,
        )
        assert fetched["started_at"] is not None

    def test_a_duplicate_delivery_cannot_claim_a_leased_job(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        worker.attempt(job["id"], "node-1")
        assert worker.claim(job["id"], "node-2").status_code == 409

    def test_a_cancelled_job_is_never_claimed(self, client, auth, worker_auth):
        job = submit(client, auth)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        assert WorkerCalls(client, worker_auth).claim(job["id"]).status_code == 409

    def test_an_expired_lease_can_be_claimed_again(self, client, auth, worker_auth, settings):
        settings.lease_seconds = 0.001
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        first = worker.attempt(job["id"], "node-1")
        second = worker.attempt(job["id"], "node-2")
        assert (first["attempt"], second["attempt"]) == (1, 2)
        # The first attempt's writes are refused from now on.
        assert worker.post_epoch(job["id"], first, 0).status_code == 409
        history = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["attempt_history"]
        assert [(row["worker"], row["outcome"]) for row in history] == [
            ("node-1", "lease_expired"),
            ("node-2", "running"),
        ]

    def test_a_resuming_attempt_starts_after_the_recorded_epochs_with_their_checkpoints(
        self, client, auth, worker_auth
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        first = worker.attempt(job["id"], "node-1")
        for epoch in range(2):
            worker.post_epoch(
                job["id"],
                first,
                epoch,
                checkpoint=worker.uploaded_checkpoint(job["id"], first, epoch),
            )
        worker.release(job["id"], first)
        claim = worker.claim(job["id"], "node-2").json()
        assert [record["epoch"] for record in claim["checkpoints"]] == [0, 1]
        history = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["attempt_history"]
        assert [(row["start_epoch"], row["outcome"]) for row in history] == [
            (0, "handed_back"),
            (2, "running"),
        ]


class TestRelease:
    def test_a_handed_back_job_is_queued_and_sent_again(
        self, client, auth, worker_auth, dispatcher
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        assert worker.release(job["id"], attempt).json() == {"cancelled": False, "pruned": False}
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert (fetched["status"], fetched["worker"]) == ("queued", None)
        assert dispatcher.sent == [job["id"], job["id"]]
        # The released attempt is over: its later writes are refused.
        assert worker.post_epoch(job["id"], attempt, 0).status_code == 409
        assert worker.attempt(job["id"])["attempt"] == 2

    def test_a_cancelled_job_is_not_queued_again(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        assert worker.release(job["id"], attempt).json() == {"cancelled": True, "pruned": False}
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "cancelled"


class TestEpochPosts:
    def test_a_repeated_post_changes_nothing(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        record = worker.uploaded_checkpoint(job["id"], attempt, 0)
        for _ in range(2):
            response = worker.post_epoch(job["id"], attempt, 0, checkpoint=record)
            assert response.json() == {"cancelled": False, "pruned": False}
        metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["items"]
        checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()
        assert len(metrics) == 1
        assert len(checkpoints["items"]) == 1

    def test_a_wrong_lease_token_is_refused(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        forged = {**attempt, "lease_token": "0" * 32}
        assert worker.post_epoch(job["id"], forged, 0).status_code == 409

    def test_bad_metrics_are_422(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        response = worker.post_epoch(job["id"], worker.attempt(job["id"]), 0, test_accuracy=2.0)
        assert response.status_code == 422

    def test_a_checkpoint_written_again_by_a_later_attempt_gets_its_new_sha256(
        self, client, auth, worker_auth
    ):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        first = worker.attempt(job["id"])
        original = worker.uploaded_checkpoint(job["id"], first, 0, b"first weights")
        worker.post_epoch(job["id"], first, 0, checkpoint=original)
        worker.release(job["id"], first)
        second = worker.attempt(job["id"])
        rewritten = worker.uploaded_checkpoint(job["id"], second, 0, b"weights written again")
        assert worker.post_epoch(job["id"], second, 0, checkpoint=rewritten).status_code == 200
        items = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()["items"]
        assert [(item["sha256"], item["bytes"]) for item in items] == [
            (rewritten["sha256"], rewritten["bytes"])
        ]
        metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["items"]
        assert len(metrics) == 1


class TestFinish:
    def test_success_is_recorded(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        assert worker.finish(job["id"], attempt).status_code == 200
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert fetched["status"] == "succeeded"
        assert fetched["finished_at"] is not None

    def test_failure_keeps_the_reason(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        error = {"type": "diverged", "message": "training diverged; lower the learning rate"}
        worker.finish(job["id"], worker.attempt(job["id"]), "failed", error)
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert (fetched["status"], fetched["error"]) == ("failed", error)

    def test_a_finished_job_refuses_more_writes(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        worker.finish(job["id"], attempt)
        assert worker.post_epoch(job["id"], attempt, 0).status_code == 409


class TestCheckpointPaths:
    def test_a_path_outside_the_jobs_folder_is_refused(self, client, auth, worker_auth):
        job = submit(client, auth)
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        for path in ("../../etc/passwd", "/etc/passwd", "job_other/epoch-000.pt"):
            record = {**checkpoint_record(job["id"], 0), "path": path}
            response = worker.post_epoch(job["id"], attempt, 0, checkpoint=record)
            assert response.status_code == 422, path
        for name in ("../x.pt", ".hidden", "a/b.pt", "a\\b.pt"):
            record = {
                **checkpoint_record(job["id"], 0),
                "name": name,
                "path": f"{job['id']}/{name}",
            }
            assert worker.post_epoch(job["id"], attempt, 0, checkpoint=record).status_code == 422
        listed = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()["items"]
        assert listed == []


class TestJobResult:
    def test_an_lr_range_test_curve_is_kept_on_the_job(self, client, auth, worker_auth):
        job = submit(client, auth, {"kind": "lr_range_test"})
        assert job["spec"]["lr_range_test"]["steps"] == 300
        worker = WorkerCalls(client, worker_auth)
        attempt = worker.attempt(job["id"])
        curve = {
            "points": [{"lr": 0.001, "loss": 2.3, "smoothed_loss": 2.3}],
            "suggested_lr": 0.05,
            "min_loss_lr": 0.5,
            "diverged_at_lr": 2.0,
        }
        response = client.post(
            f"/internal/v1/jobs/{job['id']}/finish",
            json={**attempt, "status": "succeeded", "result": {"lr_range_test": curve}},
            headers=worker_auth,
        )
        assert response.status_code == 200
        fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert fetched["result"] == {"lr_range_test": curve, "split": None}
