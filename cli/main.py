"""`tunelab`: a thin dispatcher that imports the api or the worker only for the command it runs,
so `tunelab api` never loads torch."""

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from shared.settings import Settings


class SettingsProblem(SystemExit):
    pass


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "TUNELAB_" + str(first["loc"][0]).upper() if first["loc"] else "TUNELAB_*"
        raise SettingsProblem(f"tunelab: {name} is not valid: {first['msg']}") from None


def require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise SettingsProblem(f"tunelab: TUNELAB_{name.upper()} must be set")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def check_database(settings: Settings) -> None:
    """One clear line, not a traceback, when the database is unreachable or not migrated."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from api.db import make_engine
    from api.migrations import alembic_config

    url = _redacted(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).strip().splitlines()[0]
        raise SettingsProblem(f"tunelab: cannot reach the database at {url}: {reason}") from None
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        raise SettingsProblem(
            f"tunelab: the database at {url} is not at the newest schema; run `tunelab db upgrade`"
        )


def cmd_api(args: argparse.Namespace) -> int:
    settings = load_settings()
    require(settings, "worker_token")
    check_database(settings)
    import uvicorn

    from api.main import create_app

    _logging()
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    require(settings, "worker_token")
    _logging()
    from worker.mnist_files import ensure_mnist

    # Done here, before the pool forks, so each training process finds the files ready.
    ensure_mnist(settings.data_dir)
    from shared.broker import make_broker_folders
    from worker.celery_app import app

    make_broker_folders(settings)
    argv = [
        "worker",
        "--loglevel=INFO",
        "--pool=prefork",
        f"--concurrency={args.concurrency}",
        "-Q",
        settings.queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.worker_name:
        argv += ["-n", settings.worker_name]
    app.worker_main(argv)
    return 0


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    settings = load_settings()
    _make_sqlite_folder(settings)
    from api.migrations import upgrade

    upgrade(settings.database_url)
    print(f"database at head: {_redacted(settings.database_url)}")
    return 0


def new_key(database_url: str, tenant_name: str) -> tuple[str, str, str]:
    """(tenant name, tenant id, plaintext key) for a new key; the tenant is made if new."""
    from sqlmodel import Session

    from api.db import make_engine
    from api.keys import create_key

    with Session(make_engine(database_url)) as session:
        tenant, key = create_key(session, tenant_name)
        return tenant.name, tenant.id, key


def cmd_keys_create(args: argparse.Namespace) -> int:
    name, tenant_id, key = new_key(load_settings().database_url, args.tenant)
    print(f"tenant {name} ({tenant_id}); this key is shown once:")
    print(key)
    return 0


def cmd_keys_list(_args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from api.db import make_engine
    from api.keys import list_keys

    with Session(make_engine(load_settings().database_url)) as session:
        for key, tenant in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.prefix}  {tenant.name:20}  created {key.created_at:%Y-%m-%d}  {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from api.db import make_engine
    from api.keys import revoke_key

    with Session(make_engine(load_settings().database_url)) as session:
        if not revoke_key(session, args.prefix):
            print(f"no key with prefix {args.prefix}", file=sys.stderr)
            return 1
    print(f"key {args.prefix} revoked")
    return 0


def cmd_data_prepare(_args: argparse.Namespace) -> int:
    settings = load_settings()
    _logging()
    from worker.mnist_files import DataPreparationError, prepare_mnist

    try:
        folder = prepare_mnist(settings.data_dir)
    except DataPreparationError as error:
        print(f"tunelab: {error}", file=sys.stderr)
        return 1
    print(f"MNIST ready and checked: {folder}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """The embedded default: SQLite, a filesystem broker, one API and one worker process."""
    os.environ.setdefault("TUNELAB_WORKER_TOKEN", secrets.token_urlsafe(24))
    os.environ["TUNELAB_API_URL"] = f"http://127.0.0.1:{args.port}"
    settings = load_settings()
    for step in (cmd_data_prepare, cmd_db_upgrade):
        if step(args) != 0:
            return 1
    _, _, key = new_key(settings.database_url, args.tenant)
    tunelab = [sys.executable, "-m", "cli.main"]
    processes = [
        subprocess.Popen([*tunelab, "api", "--host", args.host, "--port", str(args.port)]),
        subprocess.Popen([*tunelab, "worker"]),
    ]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    if _wait_for_api(url, processes):
        print(
            DEV_BANNER.format(url=url, key=key, tenant=args.tenant, database=settings.database_url),
            flush=True,
        )
    return _supervise(processes)


DEV_BANNER = """
Tunelab is running on the embedded default ({database}, filesystem broker).
  docs     {url}/docs
  API key  {key}
           (tenant "{tenant}"; shown once, stored hashed)
  try      export TUNELAB_KEY={key}
           curl -s -X POST {url}/v1/jobs -H "Authorization: Bearer $TUNELAB_KEY" \\
                -H 'Content-Type: application/json' -d '{{}}'
Ctrl-C stops the API and the worker.
"""


def _wait_for_api(url: str, processes: list[subprocess.Popen[bytes]]) -> bool:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return False


def _supervise(processes: list[subprocess.Popen[bytes]]) -> int:
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


def _make_sqlite_folder(settings: Settings) -> None:
    prefix = "sqlite:///"
    if settings.database_url.startswith(prefix) and settings.database_url != prefix + ":memory:":
        Path(settings.database_url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        under: argparse._SubParsersAction = commands,
    ) -> argparse.ArgumentParser:  # type: ignore[type-arg]
        sub = under.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    api = add("api", cmd_api, "run the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    worker = add("worker", cmd_worker, "run a training worker")
    worker.add_argument(
        "--concurrency", type=int, default=1, help="training processes (one per GPU)"
    )
    dev = add("dev", cmd_dev, "API and one worker on the embedded default")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--tenant", default="default", help="the tenant of the printed key")

    db = commands.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    add("upgrade", cmd_db_upgrade, "migrate the database to the newest schema", db)

    keys = commands.add_parser("keys", help="tenant API keys").add_subparsers(
        dest="keys_command", required=True
    )
    add("create", cmd_keys_create, "create a key (and the tenant if new)", keys).add_argument(
        "tenant"
    )
    add("list", cmd_keys_list, "list keys by prefix", keys)
    add("revoke", cmd_keys_revoke, "revoke a key by its prefix", keys).add_argument("prefix")

    data = commands.add_parser("data", help="training data").add_subparsers(
        dest="data_command", required=True
    )
    add("prepare", cmd_data_prepare, "download and check MNIST", data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsProblem as problem:
        print(problem.code, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
