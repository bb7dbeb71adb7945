"""Two worker hosts that share no disk and no network stack with the API: one is cut off
mid-epoch, the other resumes its job from the last checkpoint it uploaded, and the first,
back on the network, is refused and stops.

The hosts are network namespaces joined by veth links (`tests/faults/hosts.py`); the API,
its redis-server and PostgreSQL are on the machine itself, which only the API reaches
(a worker's 127.0.0.1 is its own). Each host has its own data and checkpoint folders.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from testbed.services import psycopg_url
from testbed.stack import Stack, wait_until
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.availability import unavailable
from tests.faults.fast_stack import FAST_LEASES, TEST_IMAGES, TRAIN_IMAGES, job_spec
from tests.faults.harness import RedisServer, audit, client_for, tally
from tests.faults.hosts import Network, namespaces_unavailable, network
from tests.figures import figure

# Enough that host 1, training on alone while cut off, is still at it when it is back.
EPOCHS = 30


@pytest.fixture
def host_network() -> Iterator[Network]:
    reason = namespaces_unavailable()
    if reason is not None:
        unavailable(f"network namespaces cannot be made here: {reason}", "the multi-host scenario")
    with network() as made:
        yield made


def worker_host(root: Path, net: Network, api: Stack, name: str) -> Stack:
    """A worker host's deployment: its own folders, the API and the broker at the
    machine's address on the test network, every process inside the host's namespace."""
    host = net.add_host(name)
    folder = root / name
    folder.mkdir()
    write_synthetic_mnist(folder / "data", train=TRAIN_IMAGES, test=TEST_IMAGES)
    return Stack(
        folder,
        api.database_url,  # unreachable from the host, and never asked for by a worker
        api.broker_url,
        api.queue,
        port=api.port,
        host=api.host,
        launcher=host.command(),
        extra_env={**FAST_LEASES, "TUNELAB_WORKER_NAME": name},
    )


def test_a_host_cut_off_mid_epoch_loses_its_job_to_another_and_is_refused_when_back(
    tmp_path: Path, postgres_url: str, host_network: Network
) -> None:
    net = host_network
    api_folder = tmp_path / "api-host"
    api_folder.mkdir()
    redis = RedisServer(api_folder, host=net.address)
    api = Stack(
        api_folder, postgres_url, redis.url, "training", host=net.address, extra_env=FAST_LEASES
    )
    one = worker_host(tmp_path, net, api, "host-1")
    two = worker_host(tmp_path, net, api, "host-2")
    link_one = net.hosts[0]
    try:
        redis.start()
        one_worker = one.start_worker("worker", wait=False)
        api.tunelab("db", "upgrade")
        api.start_api()
        one.wait_for_worker(one_worker)
        client = client_for(api, api.create_key())
        job_id = client.submit(job_spec(epochs=EPOCHS))["id"]

        # Two epochs recorded (so a checkpoint is uploaded) and the third under way on
        # host 1; host 2 is ready to take the job.
        client.epochs_done(job_id, 2)
        two_worker = two.start_worker("worker")
        mid_epoch = client.wait_for(
            job_id,
            "to be mid-epoch on host 1",
            lambda job: (
                job["worker"] == "host-1" and (job["progress"]["batches_completed"] or 0) > 0
            ),
        )
        link_one.link_down()
        cut_at = time.monotonic()
        recorded_at_cut = mid_epoch["progress"]["epochs_completed"]

        resumed = client.wait_for(
            job_id,
            "to run on host 2",
            lambda job: job["worker"] == "host-2" and job["status"] == "running",
        )
        wait_until(
            lambda: f"job {job_id}: resuming from" in two_worker.log(),
            60,
            "host 2 to load the checkpoint it downloaded",
            interval=0.1,
        )
        resumed_seconds = time.monotonic() - cut_at
        start_epoch = resumed["attempt_history"][-1]["start_epoch"]

        # Back on the network while host 2 trains: host 1's posts for its old attempt
        # are refused, and it stops.
        link_one.link_up()
        wait_until(
            lambda: f"job {job_id}: attempt 1 stopped" in one_worker.log(),
            90,
            "host 1 to hear that it lost the job, and stop",
        )
        trained_on_one = one_worker.log().count(": test accuracy")
        finished = client.finished(job_id)
        assert finished["status"] == "succeeded", api.logs() + one.logs() + two.logs()
        assert f"job {job_id} attempt 1 lost its lease" in one_worker.log()
        # It stopped: not one epoch more once it knew.
        assert one_worker.log().count(": test accuracy") == trained_on_one < EPOCHS

        api_log = (api_folder / "api.log").read_text()
        # uvicorn's access log names the client's address: host 1's is its own.
        refused = [
            line
            for line in api_log.splitlines()
            if f"{link_one.address}:" in line and job_id in line and '" 409' in line
        ]
        ledger = audit(api.database_url, job_id)
        with psycopg.connect(psycopg_url(api.database_url)) as db:
            (recorded_by_one,) = db.execute(
                "SELECT count(*) FROM epoch_metrics WHERE job_id = %s AND attempt = 1", (job_id,)
            ).fetchone() or (0,)

        figure(
            f"[two hosts] host 1's link down mid-epoch {recorded_by_one} → training resumed "
            f"on host 2 after {resumed_seconds:.1f} s, from epoch {start_epoch} "
            f"(lease {FAST_LEASES['TUNELAB_LEASE_SECONDS']} s)"
        )
        figure(
            f"[two hosts] epochs retrained: {max(0, trained_on_one - start_epoch)} "
            f"(host 1 finished {trained_on_one}, {recorded_by_one} of them recorded before "
            f"the cut); host 1's posts refused once back: {len(refused)}"
        )
        # Resumed from the newest checkpoint the API had: nothing recorded is trained again.
        # (An epoch whose post was on its way as the link went down may be recorded too.)
        assert recorded_by_one >= recorded_at_cut
        assert start_epoch == recorded_by_one
        assert refused, "host 1's late posts reached the API and were not refused"
        assert [outcome for _, _, outcome in ledger.attempts] == ["lease_expired", "succeeded"]
        # The checkpoint travelled over HTTP: host 2 shares no folder with anyone.
        resumed_from = f"epoch-{start_epoch - 1:03d}.pt"
        assert f"job {job_id}: downloaded {resumed_from} to resume from" in two_worker.log()
        tally("two hosts, one cut off", [ledger])
        client.http.close()
    except BaseException:
        print(api.logs(), one.logs(), two.logs(), sep="\n")
        raise
    finally:
        for stack in (one, two):
            stack.stop(kill_workers=True)
        api.stop()
        redis.kill()
