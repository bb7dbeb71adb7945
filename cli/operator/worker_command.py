"""`tunelab worker`: a Celery training worker with a pool of training processes, or with
`--gpus` such workers per GPU (one, or `--per-gpu N`) under a supervisor
(cli.operator.gpu_workers)."""

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
    per_gpu: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="with --gpus: training workers per GPU, each with its own CUDA context "
            "(default TUNELAB_WORKERS_PER_GPU, 1)",
        ),
    ] = None,
) -> None:
    """Run a training worker."""
    settings = load_settings()
    require(settings, "worker_token")
    if per_gpu is not None and gpus is None:
        raise typer.BadParameter("only with --gpus", param_hint="--per-gpu")
    devices = _devices(gpus, concurrency) if gpus is not None else None
    configure_logging()
    from worker.mnist_files import ensure_mnist

    # Done here, before the pool forks (or the workers per GPU start), so each training
    # process finds the files ready.
    ensure_mnist(settings.data_dir)
    if devices is not None:
        from cli.operator import gpu_workers

        name = settings.worker_name or socket.gethostname()
        per_device = per_gpu or settings.workers_per_gpu
        raise typer.Exit(gpu_workers.run(devices, name, per_gpu=per_device))
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
            "each worker of --gpus has one training process: leave --concurrency out, and ask "
            "for more per GPU with --per-gpu",
            param_hint="--concurrency",
        )
    try:
        chosen = gpu_workers.parse_gpus(gpus)
        return gpu_workers.visible_devices() if chosen is None else chosen
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--gpus") from None
    except gpu_workers.NoDevices as error:
        raise CommandFailed(str(error)) from None
