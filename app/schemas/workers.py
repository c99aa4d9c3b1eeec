"""Response schemas for workers and for what a queued job waits for."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class DeviceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="`cpu` or `cuda:N` (numbered as jobs on that worker see them)")
    name: str | None = None
    memory_mb: int | None = Field(None, description="A GPU's memory")


class CapacityOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    memory_mb: int | None = Field(None, description="RAM (bounded by the container's limit)")
    gpu_memory_mb: list[int | None] = Field(default_factory=list)
    cpus: int | None = None


class WorkerOut(BaseModel):
    id: str = Field(description="The Celery node name (`tas worker --hostname`)")
    hostname: str | None = Field(
        description="The machine's host name: for a key with `admin` (an operator); null for"
        " every other key"
    )
    pid: int | None = Field(
        description="The worker's process id: for a key with `admin`; null for every other key"
    )
    queues: list[str] = Field(description="The queues it consumes")
    devices: list[DeviceOut]
    capacity: CapacityOut
    concurrency: int = Field(description="Jobs it runs at once")
    status: str = Field(
        description="online | draining (stopping: takes nothing new) | offline (stopped) |"
        " lost (no heartbeat for three intervals: killed, or its machine is gone)"
    )
    live: bool = Field(description="online with a recent heartbeat: it can take a job now")
    running_jobs: int = Field(
        description="The caller's tenant's jobs running on it now; another tenant's are never"
        " counted (an operator's total per worker: `tas_worker_running_jobs` in /metrics)"
    )
    started_at: datetime
    heartbeat_at: datetime


class WaitingFor(BaseModel):
    """Why a queued job cannot start yet (no live worker consumes its queue)."""

    queue: str
    reason: str
