"""The one settings object. Read from the environment (prefix ``TAS_``) at the entry points only
(CLI, app factory, Celery app) and passed down from there."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # validate_by_name: a field whose environment variable is not TAS_<field> (local_cache_dir,
    # read from TAS_CACHE_DIR) can still be passed by its field name.
    model_config = SettingsConfigDict(
        env_prefix="TAS_", env_file=".env", extra="ignore", validate_by_name=True
    )

    data_dir: Path = Field(
        Path("./var"), description="Root for the embedded database, broker and artifacts."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in data_dir."
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL; default: kombu's filesystem transport in data_dir."
    )
    artifact_dir: Path | None = Field(
        None, description="Checkpoints and models; default: data_dir/artifacts."
    )
    datasets_dir: Path | None = Field(
        None, description="torchvision datasets; default: data_dir/datasets."
    )
    allow_download: bool = Field(
        True,
        description="Download what a job needs and lacks: torchvision datasets into datasets_dir,"
        " torchvision's pretrained weights (hash-checked) into weights_dir. Off: files are placed"
        " by hand and a missing one fails the job with its name and address.",
    )
    weights_dir: Path | None = Field(
        None,
        description="torchvision's pretrained weight files (model.pretrained), under torchvision's"
        " file names; default: data_dir/weights. Filled on first use when allow_download is on.",
    )
    uploads_dir: Path | None = Field(
        None,
        description="Uploaded datasets and weights (content-addressed); default: artifact_dir/uploads"
        " (workers read them, so they live in the shared artifact store).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_upload_mb: int = Field(
        512,
        ge=1,
        description="Bytes one upload to POST /datasets or /weights may have (MiB); past it a 413."
        " An upload is received, hashed and decoded in bounded pieces (the API's memory grows by"
        " its labels only, about 20 bytes a row), so this can be raised to several GB; it bounds"
        " the temp file on the receiving machine's disk and, with TAS_ARTIFACT_URL, the object"
        " in the store.",
    )
    max_json_body_kb: int = Field(
        1024,
        ge=1,
        description="Bytes any request body may have (KiB) but an upload's (max_upload_mb) and a"
        " /predict body's (predict_max_body_mb): a job spec, a search, a key request is a few KB."
        " Refused (413) by its Content-Length before a byte is read, or once past the limit while"
        " it streams in: the body is read whole and parsed on the event loop, before the key is"
        " checked.",
    )
    # Limits on what an upload may unpack to (archives, images, rows): see README, "Datasets".
    upload_max_uncompressed_mb: int = Field(
        2048, ge=1, description="Total bytes a ZIP upload may inflate to (MiB)."
    )
    upload_max_ratio: float = Field(
        200.0, gt=1.0, description="Largest compression ratio of a ZIP upload or of its entries."
    )
    upload_max_entries: int = Field(100_000, ge=1, description="Files in a ZIP upload.")
    upload_max_pixels: int = Field(
        40_000_000, ge=1, description="Pixels (width × height) of one uploaded image."
    )
    upload_max_total_pixels: int = Field(
        200_000_000,
        ge=1,
        description="Pixels (width × height) of all of an upload's images together, read from their"
        " headers before any is decoded: a few MB of PNGs can decode to billions of pixels.",
    )
    upload_max_columns: int = Field(
        100_000, ge=2, description="Columns of an uploaded CSV (features and the target)."
    )
    upload_max_samples: int = Field(
        10_000_000, ge=1, description="Samples (rows, images) in one uploaded dataset."
    )
    cache_max_mb: int = Field(
        20_480,
        ge=0,
        description="Preprocessed-tensor cache bound (MiB); least recently used entries go first.",
    )
    device_data_mb: int | None = Field(
        None,
        ge=0,
        description="Most training data (MiB, compact: uint8 images) a job keeps whole on its"
        " training device; a larger dataset is streamed a batch at a time from host memory (a"
        " memory map of the preprocessing cache), with the same results. Unset: as much as fits"
        " (half the GPU's free memory; on the CPU, all); 0: always stream.",
    )
    # The artifact store (tas.core.objstore) and this machine's cache of it.
    artifact_url: str | None = Field(
        None,
        description="Where checkpoints, models, exports and uploads are kept: a local path,"
        " file:///path, or s3://bucket/prefix (S3 or any S3-compatible store; credentials, region"
        " and endpoint come from the standard AWS environment, AWS_ENDPOINT_URL included);"
        " default: artifact_dir on the local disk.",
    )
    local_cache_dir: Path | None = Field(
        None,
        # TAS_CACHE_DIR names this machine's cache root; the field is not called `cache_dir`
        # because that name is the preprocessed-tensor cache's folder (a property below).
        validation_alias="TAS_CACHE_DIR",
        description="This machine's cache of what it reads from the artifact store (env"
        " TAS_CACHE_DIR; never shared between machines); default: data_dir/cache.",
    )
    object_cache_max_mb: int = Field(
        10_240,
        ge=0,
        description="Bound on the artifact store's local cache (MiB): least recently used entries"
        " not being read are deleted after each fetch.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="The server secret API keys are hashed with (HMAC-SHA256); default: a random"
        " one created (mode 0600) in data_dir/secret.key. Every API process and `tas keys` must"
        " share it.",
    )
    session_hours: float = Field(
        12.0,
        gt=0,
        le=24 * 30,
        description="How long a dashboard sign-in lasts (the session cookie's lifetime); the key"
        " it was made from must stay valid too: revoking the key ends its sessions.",
    )
    auth_cache_s: float = Field(
        2.0,
        ge=0,
        description="How long an API process reuses a checked key before reading it again; a key"
        " revoked through another process is refused within this time (at once through this one).",
    )

    host: str = "127.0.0.1"
    port: int = 8000
    access_log: bool = Field(
        True, description="uvicorn's per-request access log (costs ~15% of /predict's rate)."
    )

    # Reliability knobs (see README, "What survives what").
    lease_seconds: float = Field(
        30.0, gt=0, description="A running job's lease; renewed by heartbeat."
    )
    heartbeat_seconds: float = Field(1.0, gt=0, description="Heartbeat and cancel-check interval.")
    job_log_max_lines: int = Field(
        10_000,
        ge=10,
        description="Lines one job's log keeps at most (all its runs together); past it, one"
        " 'log truncated' line and nothing more, so a chatty job cannot fill the database.",
    )
    job_log_max_line_bytes: int = Field(
        8192,
        ge=256,
        description="Bytes of one job log line kept (UTF-8); a longer line (a long traceback) is"
        " cut and ends with a marker saying how much was dropped.",
    )
    max_attempts: int = Field(3, ge=1)
    distributed_timeout_s: float = Field(
        300.0,
        gt=0,
        description="How long one collective of a data-parallel job (resources.processes > 1)"
        " may wait for its peers: a hung or vanished process fails the run after it.",
    )
    distributed_wait_s: float = Field(
        3600.0,
        gt=0,
        description="How long the other processes of a data-parallel job wait for the first one"
        " while it works alone (preparing the data, writing a checkpoint, evaluating).",
    )
    distributed_stop_grace_s: float = Field(
        30.0,
        gt=0,
        description="How long a data-parallel job's processes may take to checkpoint and exit"
        " after a cancel before the whole group is killed.",
    )
    cancel_grace_s: float = Field(
        3.0,
        gt=0,
        description="How long a one-process job may take to stop after a cancel (or a lost lease)"
        " before it is ended without waiting for the step in progress: the job is settled as"
        " cancelled, and its pool process is ended and replaced.",
    )
    worker_stop_grace_s: float = Field(
        8.0,
        gt=0,
        description="How long a stopping worker may take to checkpoint its running jobs and exit"
        " before it (and, under `tas serve`, its whole process group) is killed.",
    )
    visibility_timeout_s: int = Field(
        43200, ge=1, description="Redis redelivery timeout; keep above the longest job."
    )
    reaper_interval_s: float = Field(10.0, gt=0)
    requeue_after_s: float = Field(
        60.0,
        gt=0,
        description="A job queued this long without being claimed is published again if the"
        " broker holds fewer messages for its queue than there are queued jobs (a lost message).",
    )
    broker_poll_s: float = Field(
        0.05,
        gt=0,
        description="How often an idle worker looks for a message on the embedded (filesystem)"
        " broker; Redis delivers at once.",
    )
    worker_heartbeat_s: float = Field(
        5.0,
        gt=0,
        description="How often a worker refreshes its row in `workers`; one silent for three"
        " intervals is no longer live (GET /workers, a job's waiting_for).",
    )
    worker_forget_s: float = Field(
        3600.0,
        gt=0,
        description="How long an offline or lost worker is still listed by GET /workers.",
    )
    dispatch_start_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a job a worker has handed to its pool may wait for a pool child to"
        " start it, and a new pool child may take to get ready for one. Past it the worker logs a"
        " warning and replaces the child; a job that child had taken goes back to the broker.",
    )
    device_wait_s: float = Field(
        60.0,
        gt=0,
        description="How long a job waits on a GPU worker for its GPUs to be free (another job, or"
        " another worker given the same GPUs, holds them) before its message is handed back for"
        " another worker; the job is not claimed while it waits, so it never fails for this.",
    )

    # Serving (see README, "Serving").
    predict_cache_size: int = Field(8, ge=1, description="Loaded models kept in memory.")
    predict_cache_mb: float = Field(
        2048.0, gt=0, description="Memory bound on the loaded models' weights (MiB)."
    )
    predict_max_batch: int = Field(
        64, ge=1, description="Samples gathered from concurrent requests into one forward pass."
    )
    predict_max_wait_ms: float = Field(
        1.0, ge=0, description="How long a forward pass waits for more requests to fill its batch."
    )
    predict_max_samples: int = Field(
        4096, ge=1, description="Samples one /predict request may send; more is a 413."
    )
    predict_max_body_mb: int = Field(
        32,
        ge=1,
        description="Bytes one /predict body may have (MiB; never more than max_upload_mb): refused"
        " by its Content-Length before it is read, or while it streams in once past the limit.",
    )
    predict_max_values: int = Field(
        1_048_576,
        ge=1,
        description="Numbers one /predict JSON body may hold, all samples together, counted before"
        " it is parsed: each costs a Python float while parsing (1 Mi of them: ~60 MiB and ~0.1 s"
        " of the interpreter, which the event loop waits on too); more is a 413.",
    )
    predict_max_pixels: int = Field(
        4_194_304,
        ge=1,
        description="Pixels (width × height, all images together) one /predict request's images may"
        " decode to, read from their headers before any is decoded; more is a 413. The default"
        " takes 4096 images of 32×32 or one of 2048×2048 (~1 s and ~140 MB to decode in colour:"
        " an image is decoded whole, as float32, before it is resized to the model's input).",
    )
    predict_resolve_ttl_s: float = Field(
        1.0,
        ge=0,
        description="How long a resolved model reference (name, name@alias) is reused; moves made"
        " through this process take effect at once, other processes' within this time.",
    )
    predict_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads in the API process; null: torch's default."
    )

    # Per-tenant quotas (see README, "Security").
    max_active_jobs_per_tenant: int = Field(
        100,
        ge=1,
        description="Queued and running jobs one tenant may have at once; a submit, clone or"
        " resume beyond it is a 429 with Retry-After.",
    )
    max_stored_mb_per_tenant: int | None = Field(
        51_200,
        ge=1,
        description="Bytes one tenant may store (MiB): its uploaded datasets and weights and its"
        " jobs' files (checkpoints, models, predictions). An upload past it is a 413, a job"
        " submitted while over it a 429; null: no bound.",
    )

    # What one job may ask a worker for, checked at submit before anything is allocated.
    max_parameters: int = Field(
        150_000_000,
        ge=1,
        description="Parameters of a job's model, counted at submit on the meta device (no memory):"
        " above it is a 422 naming the layer sizes. The default takes every torchvision"
        " classifier up to VGG (144 million).",
    )
    default_job_minutes: float = Field(
        60.0,
        gt=0,
        le=525_600,
        description="The training time limit (training.max_minutes) of a job whose spec gives"
        " none, set at submit: every job has one.",
    )
    max_job_minutes: float = Field(
        10_080.0,
        gt=0,
        le=525_600,
        description="The largest training.max_minutes a submit, clone or resume may ask for (a week"
        " by default); more is a 422.",
    )
    max_training_memory_mb: int = Field(
        16_384,
        ge=1,
        description="Training memory (MiB: parameters, gradients, optimizer state, one batch's"
        " activations, estimated at submit) a job may need when no live worker of its queue"
        " reports its memory; with one, the largest such worker's memory (GPU memory for a job"
        " that trains on CUDA) is the bound.",
    )
    max_step_tflop: float = Field(
        2.0,
        gt=0,
        description="Work of one training step of one process (TFLOP: 6 × the forward's"
        " multiply-accumulates a sample × its share of the batch, estimated at submit) for a job"
        " that trains on a CPU. A cancel or a preemption is seen between steps, and a"
        " convolution's work grows with the image, not with its parameters. 2 TFLOP (resnet50"
        " on 224×224 images, batch 64, is 1.6) is several seconds of an 8-core CPU.",
    )
    max_gpu_step_tflop: float = Field(
        2_000.0,
        gt=0,
        description="As TAS_MAX_STEP_TFLOP, for a job that trains on a GPU (a cuda job, or an auto"
        " job while a live worker of its queue has one): a few seconds of a data-centre GPU.",
    )
    max_processes: int = Field(
        8,
        ge=1,
        le=64,
        description="resources.processes a job may ask for when no live worker of its queue says"
        " what it offers; with one, the largest such worker is the bound (its GPUs for a cuda job,"
        " its CPUs otherwise).",
    )

    # Live job updates (GET /jobs/{id}/events).
    max_event_streams: int = Field(
        256,
        ge=1,
        description="Event streams one API process keeps open at once; more is a 429 with"
        " Retry-After. Each costs a socket and a little memory, never a database connection.",
    )
    max_event_streams_per_tenant: int | None = Field(
        64,
        ge=1,
        description="The same bound per tenant (a quarter of the process-wide one by default, so"
        " one tenant cannot take every slot); null: only the process-wide one.",
    )
    event_poll_s: float = Field(
        0.5,
        gt=0,
        description="How often one shared query reads every watched job for the event streams.",
    )

    # Hyperparameter searches (POST /searches; see README, "Searches").
    search_storage_url: str | None = Field(
        None,
        description="SQLAlchemy URL of Optuna's storage for searches (Optuna creates and migrates"
        " its own tables there). Default: optuna.db in data_dir when the database is SQLite; on"
        " PostgreSQL the same database, in a schema of its own (`optuna`), so Optuna's tables and"
        " its Alembic version table never mix with tas's.",
    )
    search_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the API process advances each search it drives: reads its trials'"
        " new epochs, prunes, tells Optuna the results and starts the next trials.",
    )
    search_lease_s: float = Field(
        15.0,
        gt=0,
        description="How long an API process holds a search it drives without renewing it (each"
        " step renews it); another API process takes the search over once it has expired, e.g."
        " after the first was killed.",
    )

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tas.db').resolve()}"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_datasets_dir(self) -> Path:
        return (self.datasets_dir or self.data_dir / "datasets").resolve()

    @property
    def resolved_weights_dir(self) -> Path:
        return (self.weights_dir or self.data_dir / "weights").resolve()

    @property
    def resolved_uploads_dir(self) -> Path:
        return (self.uploads_dir or self.resolved_artifact_dir / "uploads").resolve()

    @property
    def remote_artifacts(self) -> bool:
        """Whether the artifact store is not the local artifact directory (TAS_ARTIFACT_URL is
        set): then the processes share nothing but the store and read it through their own
        caches. Decided from the settings alone, so a local set-up never opens a store (opening
        one makes this machine's cache directories)."""
        return self.artifact_url is not None

    @property
    def resolved_artifact_url(self) -> str:
        """The artifact store's URL (`tas.core.objstore.open_store`): artifact_url, or the local
        artifact directory."""
        return self.artifact_url or str(self.resolved_artifact_dir)

    @property
    def resolved_local_cache_dir(self) -> Path:
        return (self.local_cache_dir or self.data_dir / "cache").resolve()

    @property
    def object_cache_dir(self) -> Path:
        """The artifact store's local cache (`tas.core.objstore.LocalCache`)."""
        return self.resolved_local_cache_dir / "objects"

    @property
    def cache_dir(self) -> Path:
        """Preprocessed tensors, keyed by the data's identity and the preprocessing spec."""
        return self.resolved_artifact_dir / "cache"

    def ensure_dirs(self) -> None:
        for d in (
            self.data_dir,
            self.resolved_artifact_dir,
            self.resolved_datasets_dir,
            self.resolved_uploads_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        if self.resolved_broker_url.startswith("filesystem://"):
            for sub in ("queue", "processed"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)
