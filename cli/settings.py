"""The command's settings: `shared.settings.Settings` read from the environment once per
command, a wrong or missing setting reported as one line with exit status 2."""

from pydantic import ValidationError

from cli.errors import CommandFailed
from shared.settings import Settings


class SettingsProblem(CommandFailed):
    exit_code = 2


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "TUNELAB_" + str(first["loc"][0]).upper() if first["loc"] else "TUNELAB_*"
        raise SettingsProblem(f"{name} is not valid: {first['msg']}") from None


def require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise SettingsProblem(f"TUNELAB_{name.upper()} must be set")
