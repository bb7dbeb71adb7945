"""`tunelab data`: MNIST downloaded and checked where the workers will read it."""

import typer

from cli.errors import CommandFailed
from cli.operator.logs import configure_logging
from cli.settings import load_settings

data_app = typer.Typer(help="training data", no_args_is_help=True)


@data_app.command("prepare")
def data_prepare() -> None:
    """Download and check MNIST."""
    settings = load_settings()
    configure_logging()
    from worker.mnist_files import DataPreparationError, prepare_mnist

    try:
        folder = prepare_mnist(settings.data_dir)
    except DataPreparationError as error:
        raise CommandFailed(str(error)) from None
    print(f"MNIST ready and checked: {folder}")
