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
    hostname: str
    pid: int
    queues: list[str] = Field(description="The queues it consumes")
    devices: list[DeviceOut]
    capacity: CapacityOut
    concurrency: int = Field(description="Jobs it runs at once")
    status: str = Field(
        description="online | draining (stopping: takes nothing new) | offline (stopped) |"
        " lost (no heartbeat for three intervals: killed, or its machine is gone)"
    )
    live: bool = Field(description="online with a recent heartbeat: it can take a job now")
    running_jobs: int
    started_at: datetime
    heartbeat_at: datetime


class WaitingFor(BaseModel):
    """Why a queued job cannot start yet (no live worker consumes its queue)."""

    queue: str
    reason: str
