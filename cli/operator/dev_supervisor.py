"""`tunelab dev`'s supervisor: the API and one worker as child processes, a banner once the
API answers, and both stopped when either exits, on Ctrl-C or on SIGTERM."""

import signal
import subprocess
import sys
import time

import httpx

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


def run(host: str, port: int, *, key: str, tenant: str, database: str) -> int:
    """Starts `tunelab api` and `tunelab worker`, supervises them; their exit status."""
    tunelab = [sys.executable, "-m", "cli.main"]
    processes = [
        subprocess.Popen([*tunelab, "api", "--host", host, "--port", str(port)]),
        subprocess.Popen([*tunelab, "worker"]),
    ]
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{reachable}:{port}"
    if wait_for_api(url, processes):
        print(DEV_BANNER.format(url=url, key=key, tenant=tenant, database=database), flush=True)
    return supervise(processes)


def wait_for_api(url: str, processes: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return False


def supervise(processes: list[subprocess.Popen[bytes]]) -> int:
    def stop(*_args: object) -> None:
        raise KeyboardInterrupt

    # Set explicitly: a shell starting us in the background hands us SIGINT ignored.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        code = next(p.returncode for p in processes if p.returncode is not None) or 1
        print("tunelab: a process exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return code
