"""moto's standalone server, a real process on a free port that speaks the S3 protocol over
HTTP, for the tests of the S3 store. It emulates S3: it is not S3, and it does not check
everything S3 checks (it accepts a wrong x-amz-checksum-sha256, for one)."""

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from testbed.stack import free_port, wait_until

REGION = "us-east-1"
# moto accepts any credentials; these only keep boto3 from looking for real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class S3Server:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """The variables boto3 reads to reach this server, as a deployment would set them."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": REGION, **CREDENTIALS}

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"tunelab-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name


@contextmanager
def moto_s3(log_path: Path) -> Iterator[S3Server]:
    """Starts `python -m moto.server` and waits until it answers; always stops it."""
    port = free_port()
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://127.0.0.1:{port}")

    def answers() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"moto's server exited:\n{log_path.read_text()[-2000:]}")
        try:
            httpx.get(server.endpoint_url, timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_until(answers, 30, "moto's S3 server to answer")
        yield server
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)
