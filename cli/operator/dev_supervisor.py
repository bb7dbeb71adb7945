"""`tunelab dev`'s supervisor: the API and one worker as child processes
(cli.operator.child_processes), a banner once the API answers, and both stopped when either
exits, on Ctrl-C or on SIGTERM."""

import sys
import time

import httpx

from cli.operator.child_processes import ChildProcesses

DEV_BANNER = """
Tunelab is running on the embedded default ({database}, filesystem broker).
  docs     {url}/docs
  API key  {key}
           (tenant "{tenant}"; shown once, stored hashed)
  try      export TUNELAB_API_KEY={key}
           curl -s -X POST {url}/v1/jobs -H "Authorization: Bearer $TUNELAB_API_KEY" \\
                -H 'Content-Type: application/json' -d '{{}}'
Ctrl-C stops the API and the worker.
"""
# How long the API and the worker have to exit after SIGTERM, before they are killed.
STOP_GRACE_SECONDS = 20.0


def run(host: str, port: int, *, key: str, tenant: str, database: str) -> int:
    """Starts `tunelab api` and `tunelab worker`, supervises them; their exit status."""
    tunelab = [sys.executable, "-m", "cli.main"]
    with ChildProcesses(stop_grace=STOP_GRACE_SECONDS) as children:
        children.start("api", [*tunelab, "api", "--host", host, "--port", str(port)])
        children.start("worker", [*tunelab, "worker"])
        reachable = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{reachable}:{port}"
        if wait_for_api(url, children):
            print(DEV_BANNER.format(url=url, key=key, tenant=tenant, database=database), flush=True)
        exited = children.wait_for_signal_or_exit()
        if exited is None:
            return 0
        print("tunelab: a process exited; stopping the others", file=sys.stderr)
        return children.processes[exited].returncode or 1


def wait_for_api(url: str, children: ChildProcesses) -> bool:
    """Whether the API answered its health check within a minute, while both ran."""
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and not children.stop_signals
        and children.first_exited() is None
    ):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return False
