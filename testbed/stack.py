"""Real Tunelab processes for tests and benchmarks: the API under uvicorn and Celery workers,
each on free ports and folders of its own, always stopped at the end."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Polls `check` until it returns something truthy, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    # Where this process's output starts in a log file that earlier runs may have written.
    log_offset: int = 0

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def stop(self, grace: float = 15.0) -> None:
        if self.popen.poll() is None:
            # SIGTERM to the main process alone, as `docker stop` sends it: it stops its
            # own children (a SIGTERM to the whole group would kill Celery's idle pool
            # children under it, which the pool then starts again before it shuts down).
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the process's group (each process leads its own): nothing of it stays."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)


def _is_api(process: Process) -> bool:
    return process.name == "api"


@dataclass
class Stack:
    """The environment of one Tunelab deployment, and the processes started in it."""

    workdir: Path
    database_url: str
    broker_url: str
    queue: str
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    # The API's address: where it listens, and where the processes started here reach it.
    host: str = "127.0.0.1"
    # Put before every command this stack starts: to start it on another (network) host.
    launcher: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TUNELAB_")}
        env.update(
            {
                "TUNELAB_DATABASE_URL": self.database_url,
                "TUNELAB_BROKER_URL": self.broker_url,
                "TUNELAB_BROKER_FOLDER": str(self.workdir / "broker"),
                "TUNELAB_QUEUE": self.queue,
                "TUNELAB_DATA_DIR": str(self.workdir / "data"),
                "TUNELAB_ARTIFACT_DIR": str(self.workdir / "artifacts"),
                "TUNELAB_WORKER_DIR": str(self.workdir / "worker"),
                "TUNELAB_API_URL": self.api_url,
                "TUNELAB_WORKER_TOKEN": "integration-worker-token",
                "TUNELAB_HEARTBEAT_SECONDS": "1",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env

    def run_tunelab(
        self,
        *args: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs one `tunelab` command to completion, whatever its exit status."""
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO_ROOT,
            env={**self.env(), **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def tunelab(self, *args: str, timeout: float = 120) -> str:
        """Runs one `tunelab` command that must succeed and returns its output."""
        result = self.run_tunelab(*args, timeout=timeout)
        assert result.returncode == 0, f"tunelab {' '.join(args)}: {result.stderr[-2000:]}"
        return result.stdout

    def client_command(
        self, key: str, *args: str, timeout: float = 180, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A client command as a tenant runs it: with its key, on a terminal wide enough
        that no table cell wraps (the assertions read whole rows)."""
        env = {"TUNELAB_API_KEY": key, "COLUMNS": "200"}
        return self.run_tunelab(*args, timeout=timeout, env=env, stdin=stdin)

    @contextmanager
    def running_client_command(self, key: str, *args: str) -> Iterator[subprocess.Popen[str]]:
        """A client command as a tenant runs it (a `watch`), left running while the caller
        acts, its output piped; killed on the way out if it has not ended by then."""
        popen = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO_ROOT,
            env={**self.env(), "TUNELAB_API_KEY": key},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield popen
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.communicate()

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        """An HTTP client of the API with a tenant's key."""
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Starts `tunelab ARGS`; `env` overrides settings for this process alone."""
        log_path = self.workdir / f"{name}.log"
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [*self.launcher, sys.executable, "-m", "cli.main", *args],
                cwd=REPO_ROOT,
                env={**self.env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log_path, log_offset)
        self.processes.append(process)
        return process

    def start_api(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """Starts `tunelab api --host HOST --port PORT ARGS` and waits until it answers."""
        process = self.start(
            "api", "api", "--host", self.host, "--port", str(self.port), *args, env=env
        )

        def healthy() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"the API exited:\n{process.log()[-3000:]}")
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "the API to answer /healthz")
        return process

    def start_worker(self, name: str = "worker", wait: bool = True) -> Process:
        """Starts `tunelab worker`; with `wait` false it returns at once, so that the
        worker's slow start-up (PyTorch's import) overlaps other work, and
        `wait_for_worker` then waits for it."""
        process = self.start(name, "worker")
        if wait:
            self.wait_for_worker(process)
        return process

    def wait_for_worker(self, process: Process) -> None:
        def ready() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{process.log()[-3000:]}")
            return " ready." in process.log()

        wait_until(ready, 90, "the worker to be ready")

    @property
    def apis(self) -> list[Process]:
        """The API processes, in the order they started."""
        return [process for process in self.processes if _is_api(process)]

    @property
    def api(self) -> Process:
        """The API process started last."""
        return self.apis[-1]

    @property
    def workers(self) -> list[Process]:
        """Every other process, in the order they started."""
        return [process for process in self.processes if not _is_api(process)]

    def create_key(self, tenant: str = "acme") -> str:
        return self.tunelab("keys", "create", tenant).strip().splitlines()[-1]

    def stop(self, kill_workers: bool = False) -> None:
        """Stops every process, workers before the API: a worker stopped mid-job hands
        the job back to the API. `kill_workers` kills them instead (a test's teardown,
        where nothing reads what a worker does on its way out: Celery's warm shutdown of
        an idle worker takes 4 to 9 s here)."""
        for process in reversed(self.workers):
            if kill_workers:
                process.kill()
            else:
                process.stop()
        for process in reversed(self.apis):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-4000:]}" for p in self.processes)
