"""Tunelab's one settings object, read from the environment (prefix TUNELAB_)."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, HttpUrl, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_", extra="ignore")

    # The embedded default: SQLite and a broker that needs no server, both under var/.
    database_url: str = f"sqlite:///{DEFAULT_VAR_DIR}/tunelab.db"
    broker_url: str = "filesystem://"
    broker_folder: Path = DEFAULT_VAR_DIR / "broker"
    # The broker queue training jobs go through; workers listen on the same one.
    queue: str = Field(default="training", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: Path = DEFAULT_VAR_DIR / "data"
    # The API's checkpoint store: a bucket, s3://bucket/prefix (endpoint and credentials
    # from boto3's own AWS_* variables), or, when empty, the folder artifact_dir.
    artifact_url: str = ""
    artifact_dir: Path = DEFAULT_VAR_DIR / "artifacts"
    # The worker's own folder: checkpoints it writes before uploading them, and the one it
    # downloads to resume from. Never read by the API.
    worker_dir: Path = DEFAULT_VAR_DIR / "worker"
    api_url: HttpUrl = HttpUrl("http://127.0.0.1:8000")
    worker_token: str = ""
    # The bearer token Prometheus sends to GET /metrics; apart from the tenants' keys and the
    # workers' token, so that a scraper holds no other power. Empty: /metrics answers 404.
    metrics_token: str = ""
    worker_name: str = ""
    # The tenant key the `tunelab` client commands send (TUNELAB_API_KEY).
    api_key: str = ""

    # How long a claimed attempt stays leased without a heartbeat or a post. With the 3 s
    # heartbeat a live attempt renews it ten times over; a dead worker's job is queued again
    # within the lease and one sweep, and trains again within 45 s of the worker's death.
    lease_seconds: float = Field(default=30.0, gt=0)
    # Heartbeats renew the lease and bring back news of a cancel: a cancelled job stops
    # within about this long.
    heartbeat_seconds: float = Field(default=3.0, gt=0)
    # On SIGTERM a worker finishes its epoch (and checkpoints it) if that fits in this many
    # seconds, otherwise it stops at the next batch; then it hands the job back.
    handback_grace_seconds: float = Field(default=30.0, ge=0)
    # How often the API re-sends undelivered jobs and requeues ones whose lease expired
    # (0 turns the sweep off), and how many attempts a job gets before it fails.
    sweep_seconds: float = Field(default=5.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job nobody claimed this long after it was sent is sent again, in case the
    # broker lost the message (a Redis restart without persistence); the wait doubles each
    # time, so a job that is only waiting for a free worker is not sent over and over.
    redispatch_seconds: float = Field(default=300.0, gt=0)
    # A stopping API waits this long for open requests to end (an event stream ends only
    # with its job), then cuts them, gives up its leases and exits: well inside the 10 s a
    # container is given by default. Clients reconnect; workers retry.
    shutdown_grace_seconds: int = Field(default=5, ge=0)
    # An event stream with nothing to say sends a comment this often, so that proxies and
    # clients that time out idle connections keep it open.
    events_keepalive_seconds: float = Field(default=15.0, gt=0, le=15.0)
    # Threads for the trainer; 0 means one per available core.
    torch_threads: int = Field(default=0, ge=0)
    # On a GPU, capture each job's training step in CUDA graphs where the job allows it
    # (worker.training.graphs); false trains every step eagerly.
    cuda_graphs: bool = True
    # `tunelab worker --gpus`: training processes per GPU, each a worker of its own (its
    # --per-gpu option, when given, stands instead).
    workers_per_gpu: int = Field(default=1, ge=1, le=64)

    # Limits that protect the service, enforced when a job is submitted.
    max_epochs: int = Field(default=100, ge=1)
    max_batch_size: int = Field(default=4096, ge=1)
    max_channels: int = Field(default=512, ge=1)
    max_layers: int = Field(default=64, ge=1)
    max_parameters: int = Field(default=5_000_000, ge=1)
    max_multiply_adds: int = Field(default=2_000_000_000, ge=1)
    # The whole job's estimated compute: multiply-adds per image, three times over for the
    # backward pass, for every training image of every epoch (and the evaluations). The
    # default is some hours on a CPU, minutes on a GPU.
    max_job_multiply_adds: int = Field(default=10**15, ge=1)

    # Studies: the most trials (search and confirmation runs together) one may run, and how
    # often the API's scheduler looks for free slots and finished studies.
    max_trials: int = Field(default=200, ge=1)
    schedule_seconds: float = Field(default=1.0, gt=0)
    # The most points a grid study may have: Optuna's grid sampler lists them all, each time
    # it is asked for a trial (100,000 points take some 60 ms and 10 MB).
    max_grid_points: int = Field(default=100_000, ge=1)
    # Queued plus running studies one tenant may have; one more is refused (429).
    max_active_studies: int = Field(default=10, ge=1)

    # Limits that protect the service from any one client, enforced on every request.
    # A request body larger than this is refused (413) before it is read in full.
    max_request_bytes: int = Field(default=64 * 1024, ge=1024)
    # A checkpoint a worker uploads has a limit of its own (413 beyond): it is streamed to
    # disk, never held in memory. At most 2 GiB, the largest size its 32-bit column records.
    max_checkpoint_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, le=2**31 - 1)
    # Queued plus running jobs one tenant may have; one more is refused (429).
    max_concurrent_jobs: int = Field(default=8, ge=1)
    # Event streams one tenant may hold open at once, counted in each API process (a stream
    # is served by one process, which polls the database for it every second); one more is
    # refused (429).
    max_streams_per_tenant: int = Field(default=8, ge=1)
    # Requests one API key may make to the /v1 routes in any minute, a moving window (429
    # beyond).
    requests_per_minute: int = Field(default=600, ge=1)
    # Failed authentications one client address may make in any minute, to the /v1 routes
    # and, counted apart, to the worker routes; beyond it the address is refused (429) before
    # its credentials are even looked at, valid ones included.
    failed_auth_per_minute: int = Field(default=30, ge=1)
    # Where the rate limits count: empty counts in this process (one API process, the
    # embedded default); a redis:// URL shares the counts between API processes (production).
    rate_limit_url: str = ""

    @field_validator("artifact_url")
    @classmethod
    def _s3_or_empty(cls, value: str) -> str:
        if value and not (value.startswith("s3://") and value[len("s3://") :].split("/")[0]):
            raise ValueError("must be empty (the folder artifact_dir) or s3://bucket[/prefix]")
        return value

    @field_validator("rate_limit_url")
    @classmethod
    def _redis_or_empty(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (count in this process) or a redis:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
