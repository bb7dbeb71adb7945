"""The embedded default's processes for a benchmark: SQLite, the filesystem broker, the API
and one worker, on MNIST from the benchmark's data folder; stopped when the run ends."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testbed.stack import Stack


@contextmanager
def embedded_service(
    data_dir: Path, timeout: float = 30, **settings: str
) -> Iterator[httpx.Client]:
    """A client of a fresh embedded deployment, with a tenant key; `settings` are
    TUNELAB_* variables by their lower-case names, for this deployment alone."""
    with embedded_stack(data_dir, timeout, None, **settings) as (client, _stack):
        yield client


@contextmanager
def embedded_stack(
    data_dir: Path, timeout: float = 30, env: dict[str, str] | None = None, **settings: str
) -> Iterator[tuple[httpx.Client, Stack]]:
    """embedded_service's client with its Stack, whose processes' logs a benchmark may read;
    `env` holds other variables for every process of the deployment."""
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        stack = Stack(
            workdir,
            f"sqlite:///{workdir}/tunelab.db",
            "filesystem://",
            "training",
            extra_env={
                "TUNELAB_DATA_DIR": str(data_dir.resolve()),
                **{f"TUNELAB_{name.upper()}": value for name, value in settings.items()},
                **(env or {}),
            },
        )
        try:
            stack.tunelab("db", "upgrade")
            stack.start_api()
            stack.start_worker()
            headers = {"Authorization": f"Bearer {stack.create_key('bench')}"}
            with httpx.Client(base_url=stack.api_url, headers=headers, timeout=timeout) as client:
                yield client, stack
        finally:
            stack.stop()
