"""The job commands: training jobs through the API, for people at a terminal (rich tables,
a progress bar, plots) and for scripts (`JOB=$(tunelab submit spec.json)`, `--json`, exit
statuses)."""

import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import checkpoints
from cli.client.documents import AsJson, print_document, print_json, read_json
from cli.client.formatting import console
from cli.client.http_client import ApiClient, connect, job_path
from cli.client.job_views import compare_json, compare_view, job_view, jobs_table
from cli.client.job_watch import follow
from cli.errors import CommandFailed
from shared.job_states import JobOrder, JobStatus

# The API's largest page: longer listings are fetched page by page.
PAGE_LIMIT = 100


JobId = Annotated[str, typer.Argument(metavar="JOB", help="the job's id")]
JobIds = Annotated[list[str], typer.Argument(metavar="JOB", help="the jobs' ids")]


def read_spec(path: Path) -> dict[str, Any]:
    spec = read_json(path)
    if not isinstance(spec, dict):
        raise CommandFailed(f"{path} is not a job spec: a JSON object is")
    return spec


def with_tags(spec: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    """The spec with `tags` added to its own (each once, in order); the API checks them."""
    if not tags:
        return spec
    own = spec.get("tags") or []
    if not isinstance(own, list):
        # Sent as it is, so the API's 422 says what `tags` must be.
        return spec
    return {**spec, "tags": list(dict.fromkeys([*own, *tags]))}


def jobs_listing(
    client: ApiClient, params: dict[str, str | int], limit: int
) -> tuple[list[Any], str | None]:
    """Up to `limit` jobs, page by page; and the cursor of the rest, if there is more."""
    items: list[Any] = []
    cursor: str | None = None
    while True:
        page_params = {**params, "limit": min(limit - len(items), PAGE_LIMIT)}
        if cursor:
            page_params["cursor"] = cursor
        page = client.get("/v1/jobs", params=page_params)
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor or len(items) >= limit:
            return items, cursor


# --- the commands -------------------------------------------------------------------------


def submit(
    spec_file: Annotated[
        Path, typer.Argument(metavar="SPEC.json", help="the job spec (`-` reads stdin)")
    ],
    watch: Annotated[
        bool,
        typer.Option("--watch", help="then follow it, as `watch` does but all on stderr"),
    ] = False,
    tags: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="T", help="add a tag to the spec's `tags` (repeatable)"),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key and body submit one job, never two")
    ] = None,
) -> None:
    """Submit a job; prints only its id (`JOB=$(tunelab submit spec.json)`).

    With --watch, the exit status is watch's.
    """
    body = with_tags(read_spec(spec_file), tags or [])
    with connect() as client:
        job = client.create("/v1/jobs", body, idempotency_key)
        print(job["id"], flush=True)
        if watch:
            # Everything else on stderr, so stdout stays the id alone even with --watch.
            raise typer.Exit(follow(client, job["id"], console(stderr=True)))


def watch(job_id: JobId) -> None:
    """Follow a job until it ends: a line per epoch and a summary on stdout; the bar
    within the epoch on a terminal, else progress lines on stderr."""
    with connect() as client:
        raise typer.Exit(follow(client, job_id, console()))


def jobs(
    status: Annotated[JobStatus | None, typer.Option(help="only jobs in this status")] = None,
    tag: Annotated[str | None, typer.Option(metavar="T", help="only jobs with this tag")] = None,
    name: Annotated[str | None, typer.Option(metavar="N", help="only jobs of this name")] = None,
    order: Annotated[
        JobOrder, typer.Option(help="`created_at`: newest first; `test_accuracy`: best first")
    ] = JobOrder.created_at,
    limit: Annotated[int, typer.Option(min=1, help="at most this many jobs")] = 20,
    as_json: AsJson = False,
) -> None:
    """The tenant's jobs: a table of status, tags, epochs, best test accuracy, times."""
    params: dict[str, str | int] = {"order": order.value}
    for key, value in (("status", status), ("tag", tag), ("name", name)):
        if value is not None:
            params[key] = str(value)
    with connect() as client:
        items, cursor = jobs_listing(client, params, limit)
    if as_json:
        print_json({"items": items, "next_cursor": cursor})
    elif items:
        console().print(jobs_table(items))
    else:
        print("no jobs match" if len(params) > 1 else "no jobs yet")


def show(job_id: JobId, as_json: AsJson = False) -> None:
    """One job: status, times, progress, model, best and latest epoch, checkpoints."""
    with connect() as client:
        job = client.get(job_path(job_id))
    print_document(job, as_json, job_view)


def cancel(job_id: JobId) -> None:
    """Cancel a queued or running job; a running one stops at its next batch."""
    with connect() as client:
        job = client.post(job_path(job_id, "cancel"))
    print(f"job {job['id']} {job['status']}")


def delete(job_id: JobId) -> None:
    """Delete an ended job, its metrics and its checkpoints (cancel a running one first)."""
    with connect() as client:
        client.delete(job_path(job_id))
    print(f"job {job_id} deleted")


def download(
    job_id: JobId,
    epoch: Annotated[int | None, typer.Option(min=0, help="the checkpoint of this epoch")] = None,
    best: Annotated[
        bool,
        typer.Option(
            "--best", help="the best epoch's: by validation accuracy if the job validated"
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", metavar="PATH", help="a file, or a folder for JOB-NAME.pt in it"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace PATH if it exists")] = False,
) -> None:
    """Download a checkpoint (the newest, unless --epoch or --best), its SHA-256 checked;
    prints where it went."""
    if epoch is not None and best:
        raise typer.BadParameter("give --epoch or --best, not both")
    with connect() as client:
        listed = checkpoints.listing(client, job_id)
        checkpoint = checkpoints.pick(job_id, listed, epoch=epoch, best=best)
        default_name = f"{job_id}-{checkpoint['name']}"
        if output is None:
            target = Path(default_name)
        elif output.is_dir():
            target = output / default_name
        else:
            target = output
        if target.exists() and not force:
            raise CommandFailed(f"{target} exists; pass --force to replace it")
        checkpoints.download(client, job_id, checkpoint, target)
    print(target)


def plot(
    job_ids: JobIds,
    output: Annotated[
        Path,
        typer.Option("-o", "--output", metavar="FILE.png", help="the image to write"),
    ],
) -> None:
    """Learning curves (loss, accuracy and lr per epoch) of one or more jobs; an LR range
    test's loss against lr, its suggestion marked."""
    # matplotlib takes a while to import: only this command pays for it.
    from cli.client.plots import Curves
    from cli.client.plots import plot as draw

    curves = []
    with connect() as client:
        for job_id in job_ids:
            job = client.get(job_path(job_id))
            rows = client.get(job_path(job_id, "metrics"))["items"]
            curves.append(Curves(job, rows))
    for curve in curves:
        if not curve.rows and curve.lr_range is None:
            print(f"tunelab: job {curve.job['id']} has nothing to plot yet", file=sys.stderr)
    try:
        draw(curves, output)
    except ValueError as error:
        raise CommandFailed(str(error)) from None
    except OSError as error:
        raise CommandFailed(f"cannot write {output}: {error.strerror or error}") from None
    print(output)


def compare(job_ids: JobIds, as_json: AsJson = False) -> None:
    """Jobs side by side: where their specs differ (only those paths), and their results."""
    if len(job_ids) < 2:
        raise typer.BadParameter("compare needs two jobs or more")
    with connect() as client:
        found = [client.get(job_path(job_id)) for job_id in job_ids]
    if as_json:
        print_json(compare_json(found))
    else:
        console().print(compare_view(found))


def predict(
    job_id: JobId,
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE",
            help="28x28 grayscale, a white digit on black as in MNIST (others are converted "
            "to grayscale and resized, never inverted)",
        ),
    ],
    checkpoint_name: Annotated[
        str | None,
        typer.Option("--checkpoint", metavar="NAME", help="this checkpoint, not the best epoch's"),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="keep downloaded checkpoints here (default: a temporary folder)"
        ),
    ] = None,
) -> None:
    """The digit in each image by the job's network: PATH, DIGIT and its probability,
    tab-separated, a line per image."""
    try:
        # PyTorch loads here and only here: no other client command needs it.
        from cli.client.predict import predict_files
    except ImportError as error:
        raise CommandFailed(
            f"predict needs PyTorch ({error.name} is missing): pip install 'tunelab[worker]'"
        ) from None

    folder = cache_dir or Path(tempfile.gettempdir()) / "tunelab-checkpoints"
    with connect() as client:
        listed = checkpoints.listing(client, job_id)
        checkpoint = checkpoints.pick(job_id, listed, name=checkpoint_name, best=True)
        path = checkpoints.cached(client, job_id, checkpoint, folder)
    for prediction in predict_files(path, checkpoint["sha256"], images):
        print(prediction.line())
