"""`tunelab worker`: a Celery training worker with a pool of training processes, or with
`--gpus` one such worker per GPU under a supervisor (cli.operator.gpu_workers)."""

import socket
from typing import Annotated

import typer

from cli.errors import CommandFailed
from cli.operator.logs import configure_logging
from cli.settings import load_settings, require


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="training processes")] = 1,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="one worker per GPU, each seeing only its own: `all`, or indices such as 0,1"
        ),
    ] = None,
) -> None:
    """Run a training worker."""
    settings = load_settings()
    require(settings, "worker_token")
    devices = _devices(gpus, concurrency) if gpus is not None else None
    configure_logging()
    from worker.mnist_files import ensure_mnist

    # Done here, before the pool forks (or the workers per GPU start), so each training
    # process finds the files ready.
    ensure_mnist(settings.data_dir)
    if devices is not None:
        from cli.operator import gpu_workers

        raise typer.Exit(gpu_workers.run(devices, settings.worker_name or socket.gethostname()))
    from shared.broker import make_broker_folders
    from worker.celery_app import app

    make_broker_folders(settings)
    argv = [
        "worker",
        "--loglevel=INFO",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "-Q",
        settings.queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.worker_name:
        argv += ["-n", settings.worker_name]
    app.worker_main(argv)


def _devices(gpus: str, concurrency: int) -> list[str]:
    from cli.operator import gpu_workers

    if concurrency != 1:
        raise typer.BadParameter(
            "one training process per GPU: leave --concurrency out", param_hint="--concurrency"
        )
    try:
        chosen = gpu_workers.parse_gpus(gpus)
        return gpu_workers.visible_devices() if chosen is None else chosen
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--gpus") from None
    except gpu_workers.NoDevices as error:
        raise CommandFailed(str(error)) from None
