"""The deployment every fault scenario runs: leases, heartbeats and sweeps short enough that a
lost worker is noticed in seconds (the mechanisms are the ones production runs with its longer
defaults), and jobs whose epochs last long enough to be killed in the middle of."""

from collections.abc import Callable

from testbed.stack import Stack
from tests.faults.harness import Client

# Enough images that an epoch lasts a few seconds on one thread: long enough to be killed
# in the middle of.
TRAIN_IMAGES = 6000
TEST_IMAGES = 500

FAST_LEASES = {
    "TUNELAB_LEASE_SECONDS": "6",
    "TUNELAB_HEARTBEAT_SECONDS": "1",
    "TUNELAB_SWEEP_SECONDS": "1",
    "TUNELAB_REDISPATCH_SECONDS": "5",
    "TUNELAB_MAX_ATTEMPTS": "5",
    "TUNELAB_HANDBACK_GRACE_SECONDS": "0",
    # One thread per training process: runs are reproducible and two workers share 2 cores.
    "TUNELAB_TORCH_THREADS": "1",
}


def job_spec(epochs: int, seed: int = 7, **fields: object) -> dict[str, object]:
    return {
        "epochs": epochs,
        "seed": seed,
        "data": {"train_subset": TRAIN_IMAGES, "test_subset": TEST_IMAGES},
        **fields,
    }


# The fault_stack fixture: builds a deployment with the given settings and workers.
StackFactory = Callable[..., tuple[Stack, Client]]
