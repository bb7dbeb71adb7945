"""The JSON documents the client commands read (a job spec, a study) and print (`--json`)."""

import json
import sys
from pathlib import Path
from typing import Any

from cli.errors import CommandFailed


def read_json(path: Path) -> Any:
    """The JSON in the file at `path`, or on stdin for `-`; a failure is one line."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as error:
        raise CommandFailed(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandFailed(f"{path} is not JSON: {error}") from None


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))
