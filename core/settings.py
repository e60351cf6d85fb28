"""Service configuration: one pydantic-settings ``Settings`` read from the environment.

Defaults describe the embedded mode (SQLite, a queue file and artifacts under ``RECDISTILL_HOME``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; each field's description is its documentation."""

    model_config = SettingsConfigDict(env_file=None, extra="forbid", case_sensitive=False)

    home: Path = Field(
        Path("./var"),
        validation_alias="RECDISTILL_HOME",
        description="Folder for the embedded mode's state: SQLite database, queue file and artifacts.",
    )
    database_url: str = Field(
        "",
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL of the database (e.g. postgresql+psycopg://user@host/db). "
        "Default: sqlite:///<home>/recdistill.db.",
    )
    celery_broker_url: str = Field(
        "",
        validation_alias="CELERY_BROKER_URL",
        description="Celery broker URL (e.g. redis://host:6379/0). "
        "Default: sqla+sqlite:///<home>/queue.db, a queue that needs no Redis.",
    )
    artifact_dir: Path = Field(
        Path(""),
        validation_alias="ARTIFACT_DIR",
        description="Artifact store (uploaded datasets, checkpoints, serving bundles); shared by all "
        "workers and API processes in the distributed mode. Default: <home>/artifacts.",
    )
    api_key: str | None = Field(
        None,
        validation_alias="RECDISTILL_API_KEY",
        description="API key required in the X-API-Key header of every endpoint except /healthz, /readyz and "
        "the docs (see RECDISTILL_OPEN_SERVING). Unset: every endpoint is open except checkpoint download, "
        "which is refused (it hands out the weights and every raw user id).",
    )
    open_serving: bool = Field(
        False,
        validation_alias="RECDISTILL_OPEN_SERVING",
        description="Serve /recommend, /recommend/batch and /items/{item}/similar without the API key "
        "(a public recommender); everything else still needs it.",
    )
    max_upload_mb: int = Field(
        500,
        gt=0,
        validation_alias="RECDISTILL_MAX_UPLOAD_MB",
        description="Largest accepted dataset upload, in MiB.",
    )
    max_upload_decompressed_mb: int = Field(
        1024,
        gt=0,
        validation_alias="RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB",
        description="Largest size of an upload's data once decompressed (.gz/.bz2/.xz, or Parquet's own "
        "codecs), in MiB; larger ones are refused with 413 before they are parsed.",
    )
    ingest_concurrency: int = Field(
        2,
        gt=0,
        validation_alias="RECDISTILL_INGEST_CONCURRENCY",
        description="Uploads parsed at once per API process (each in its own child process).",
    )
    ingest_wait_s: float = Field(
        30.0,
        gt=0,
        validation_alias="RECDISTILL_INGEST_WAIT",
        description="Seconds an upload waits for a free parse slot before it is answered 503 with Retry-After.",
    )
    ingest_timeout_s: float = Field(
        600.0,
        gt=0,
        validation_alias="RECDISTILL_INGEST_TIMEOUT",
        description="Wall-clock seconds a child process may spend parsing and validating one upload.",
    )
    ingest_memory_mb: int = Field(
        8192,
        gt=0,
        validation_alias="RECDISTILL_INGEST_MEMORY_MB",
        description="Resident memory the child process that parses an upload may use, in MiB (checked every "
        "0.1 s; past it the child is killed and the upload refused with 413).",
    )
    upload_leftover_age_s: float = Field(
        3600.0,
        gt=0,
        validation_alias="RECDISTILL_UPLOAD_LEFTOVER_AGE",
        description="At start-up, dataset folders without a database row (a crash mid-upload) untouched for "
        "this many seconds are removed; keep it above the longest upload plus its parse.",
    )
    max_k: int = Field(
        1000,
        gt=0,
        validation_alias="RECDISTILL_MAX_K",
        description="Largest k (and k + offset) a recommendation request may ask for.",
    )
    report_latency_queries: int = Field(
        200,
        ge=0,
        le=100_000,
        validation_alias="RECDISTILL_REPORT_LATENCY_QUERIES",
        description="Recommend calls (random users, k=10) timed on the student's and the teacher's index at "
        "the end of each job for the compression report (p50/p99); 0 skips the measurement.",
    )
    # Request limits: what one request may cost the server (each is refused with a 4xx naming it).
    max_exclude: int = Field(
        1000,
        gt=0,
        validation_alias="RECDISTILL_MAX_EXCLUDE",
        description="Most item ids one recommendation request may exclude (comma-separated parts of "
        "`exclude` count one each).",
    )
    max_foldin_items: int = Field(
        1000,
        gt=0,
        validation_alias="RECDISTILL_MAX_FOLDIN_ITEMS",
        description="Most item ids in one POST /recommend (a new user's interactions, folded in by one "
        "ridge solve).",
    )
    max_batch_users: int = Field(
        1000,
        gt=0,
        validation_alias="RECDISTILL_MAX_BATCH_USERS",
        description="Most users in one POST /recommend/batch.",
    )
    max_batch_items: int = Field(
        100_000,
        gt=0,
        validation_alias="RECDISTILL_MAX_BATCH_ITEMS",
        description="Most items one POST /recommend/batch may return: users x (k + offset) is refused above "
        "it, which bounds the response (~40 bytes an item) and the work behind it.",
    )
    max_body_kb: int = Field(
        1024,
        gt=0,
        validation_alias="RECDISTILL_MAX_BODY_KB",
        description="Largest request body in KiB, uploads excepted (they have RECDISTILL_MAX_UPLOAD_MB).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias="RECDISTILL_BODY_TIMEOUT",
        description="Seconds a request body may stall (no bytes arriving) before the request is answered "
        "408 and its connection closed.",
    )
    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto",
        validation_alias="RECDISTILL_INDEX",
        description="FAISS index the worker builds into each serving bundle: auto (flat up to "
        "RECDISTILL_INDEX_EXACT_MAX_ITEMS items, ivf above), flat (exact inner product), ivf (IVF-flat, "
        "approximate: seconds to build at 1M items) or hnsw (approximate; ~10 min to build at 1M items on 2 "
        "cores). API processes load the index saved in the bundle.",
    )
    index_exact_max_items: int = Field(
        100_000,
        ge=0,
        le=100_000_000,
        validation_alias="RECDISTILL_INDEX_EXACT_MAX_ITEMS",
        description="With RECDISTILL_INDEX=auto: catalogues up to this many items get the exact (flat) index, "
        "larger ones an approximate one (exact search costs ~30 ms a query at 1M items x 32 dims).",
    )
    index_target_recall: float = Field(
        0.95,
        ge=0.5,
        le=1.0,
        validation_alias="RECDISTILL_INDEX_TARGET_RECALL",
        description="Approximate indexes: the recall@10 against exact search (on 500 of the model's own users) "
        "the worker tunes the search breadth (IVF nprobe, HNSW efSearch) to reach; the recall reached is "
        "stored in the bundle and shown by GET /models/{id}.",
    )
    host: str = Field(
        "127.0.0.1", validation_alias="RECDISTILL_HOST", description="Address `recdistill serve` binds."
    )
    port: int = Field(
        8000, gt=0, lt=65536, validation_alias="RECDISTILL_PORT", description="Port `recdistill serve` binds."
    )
    data_dir: Path | None = Field(
        None,
        validation_alias="RECDISTILL_DATA_DIR",
        description="Cache of public datasets fetched by `recdistill datasets fetch` "
        "(default ~/.cache/recdistill/datasets).",
    )
    visibility_timeout_s: int = Field(
        43200,
        gt=0,
        validation_alias="RECDISTILL_VISIBILITY_TIMEOUT",
        description="Redis broker only: seconds before a taken but unacknowledged job message is delivered "
        "again. Messages are acknowledged when the job ends (late acks), so keep it above the longest job "
        "(default 12 h; a retry's countdown, at most 300 s, must fit too): a shorter one only re-sends running "
        "jobs, whose claims are then refused as busy. It plays no part in recovery: a dead worker's job is "
        "re-queued by the sweeper once its lease lapses (RECDISTILL_JOB_LEASE + RECDISTILL_SWEEP_INTERVAL), "
        "and by the server at once when its own local worker dies. Must exceed the lease.",
    )
    job_lease_s: int = Field(
        120,
        gt=0,
        validation_alias="RECDISTILL_JOB_LEASE",
        description="Seconds without a heartbeat after which a running job counts as abandoned and may be "
        "claimed by another worker.",
    )
    job_max_crashes: int = Field(
        3,
        ge=1,
        le=1000,
        validation_alias="RECDISTILL_JOB_MAX_CRASHES",
        description="Runs of one job that may end with their worker gone (killed, out of memory, lease lapsed) "
        "before the job fails instead of going back to the queue.",
    )
    job_memory_mb: int | None = Field(
        None,
        ge=64,
        le=2**30,
        validation_alias="RECDISTILL_JOB_MEMORY_MB",
        description="Memory one job may use, in MiB. A job whose floor (its models and a batch, the teacher's "
        "top-M lists, EASE's solve, HetComp's trajectories: core/jobs/memory.py) is above it is refused at submission (422 naming "
        "the option) and failed by the worker before its first phase. Unset: the machine's memory, or its "
        "container's limit; set it to the workers' where they run elsewhere (to the GPU's on a GPU worker, "
        "where these structures live).",
    )
    heartbeat_s: float = Field(
        10.0,
        gt=0,
        validation_alias="RECDISTILL_HEARTBEAT",
        description="Seconds between heartbeats a worker writes to its running job (kept below the lease).",
    )
    sweep_interval_s: float = Field(
        15.0,
        gt=0,
        validation_alias="RECDISTILL_SWEEP_INTERVAL",
        description="Seconds between a worker's recovery sweeps: jobs whose lease lapsed are re-queued (or "
        "end cancelled when a cancel is pending) and leftovers of crashed writes are removed. A dead worker's "
        "job is back in the queue within one lease plus one interval.",
    )
    local_worker_wait_s: float = Field(
        30.0,
        ge=0,
        validation_alias="RECDISTILL_LOCAL_WORKER_WAIT",
        description="How long `recdistill serve` waits for the local worker of a previous serve on the same "
        "RECDISTILL_HOME to exit (an orphan exits within ~10 s of its serve's death) before it refuses to "
        "start a second one.",
    )
    task_max_retries: int = Field(
        5,
        ge=0,
        validation_alias="RECDISTILL_TASK_MAX_RETRIES",
        description="Retries of a job after transient errors (database or broker unreachable), with backoff.",
    )
    device: str = Field(
        "auto",
        validation_alias="RECDISTILL_DEVICE",
        description="Torch device for jobs: auto (CUDA when present), cpu, cuda or cuda:N.",
    )
    torch_threads: int | None = Field(
        None,
        gt=0,
        validation_alias="RECDISTILL_TORCH_THREADS",
        description="CPU threads torch may use inside a job (unset: torch's default, one per core). "
        "Set it when several workers share a machine's cores.",
    )
    log_level: str = Field(
        "INFO", validation_alias="RECDISTILL_LOG_LEVEL", description="Log level of the server and workers."
    )

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        """Resolve the home folder and derive the defaults that live inside it."""
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'recdistill.db'}"
        if not self.celery_broker_url:
            self.celery_broker_url = f"sqla+sqlite:///{self.home / 'queue.db'}"
        if str(self.artifact_dir) in ("", "."):
            self.artifact_dir = self.home / "artifacts"
        self.artifact_dir = self.artifact_dir.expanduser().resolve()
        if self.visibility_timeout_s <= self.job_lease_s:
            raise ValueError(
                f"RECDISTILL_VISIBILITY_TIMEOUT ({self.visibility_timeout_s}) must exceed RECDISTILL_JOB_LEASE "
                f"({self.job_lease_s}): a running job's message would be re-sent while it still runs"
            )
        if self.heartbeat_s >= self.job_lease_s:
            raise ValueError(
                f"RECDISTILL_HEARTBEAT ({self.heartbeat_s}) must be below RECDISTILL_JOB_LEASE ({self.job_lease_s})"
            )
        return self

    @property
    def embedded_broker(self) -> bool:
        """True when the queue is the no-Redis SQLAlchemy transport (embedded mode)."""
        return self.celery_broker_url.startswith("sqla+")

    def ensure_dirs(self) -> None:
        """Create the home and artifact folders (and the SQLite files' parents)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        for url in (self.database_url, self.celery_broker_url):
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` (or ``sqla+sqlite:///``) URL, or None for other URLs."""
    for prefix in ("sqla+sqlite:///", "sqlite+pysqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            return Path(rest) if rest and rest != ":memory:" else None
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (``clear_settings_cache()`` re-reads the environment)."""
    return Settings()


def clear_settings_cache() -> None:
    """Forget the cached settings so the next ``get_settings()`` re-reads the environment (tests)."""
    get_settings.cache_clear()
