"""The JSON documents the client commands read (a job spec, a study) and print (`--json`)."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from cli.client.formatting import console
from cli.errors import CommandFailed

AsJson = Annotated[bool, typer.Option("--json", help="the API's JSON, for scripts")]


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


def print_document(document: Any, as_json: bool, view: Callable[[Any], RenderableType]) -> None:
    """The API's JSON as it came, for scripts (`--json`), else `view` of it for a person."""
    if as_json:
        print_json(document)
    else:
        console().print(view(document))
