"""The one kind of failure a `tunelab` command reports: a line a user can act on, printed on
stderr by the entry point, never a traceback."""


class CommandFailed(Exception):
    """A failure worth one line on stderr; the command exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
