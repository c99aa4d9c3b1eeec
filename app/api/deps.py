"""Request-scoped dependencies. Everything the routes need comes from `app.state`, set once by
`create_app`: the settings, the session factory, the publisher and the predictor cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.services.serving import Serving
from tas.core.data.registry import BUILTIN_DATASETS
from tas.errors import Conflict
from tas.queue import Publisher
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import jobs as job_store
from tas.store.orm import Dataset, Job
from tas.store.unit_of_work import unit_of_work


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


#: Methods whose routes only read: their sessions come from the read-only factory (on SQLite
#: their transaction takes no lock).
READ_METHODS = frozenset({"GET", "HEAD"})


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work (tas.store.unit_of_work): committed when the route returns,
    rolled back when it raises; what the route queued with `after_commit` runs after the commit.
    Routes and services never commit.

    SessionDep declares scope "function": FastAPI then ends this dependency when the route has
    returned and its response is built, before a byte is sent, so a client that has its 201 can
    read the row at once (and a failed commit answers 500, never a 201 for a rolled-back row).
    FastAPI's default for a dependency with `yield` ends it after the response is sent."""
    state = request.app.state
    sessions = state.readers if request.method in READ_METHODS else state.sessions
    with unit_of_work(sessions) as session:
        yield session


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_serving(request: Request) -> Serving:
    """async: FastAPI runs a plain `def` dependency on a worker thread, a hop /predict can't afford."""
    serving: Serving = request.app.state.serving
    return serving


async def get_tenant() -> str:
    """Until API keys land, every caller is the default tenant (the server binds to loopback).
    async for the same reason as `get_serving`."""
    return "default"


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
TenantDep = Annotated[str, Depends(get_tenant)]
ServingDep = Annotated[Serving, Depends(get_serving)]


def load_job(
    session: SessionDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]
) -> Job:
    return job_store.get_job(session, job_id, tenant=tenant)


JobDep = Annotated[Job, Depends(load_job)]


def load_dataset(
    session: SessionDep, tenant: TenantDep, dataset_id: Annotated[str, Path(max_length=64)]
) -> Dataset:
    """One of the tenant's uploads (another tenant's id answers 404, as an unknown one)."""
    if dataset_id in BUILTIN_DATASETS:
        raise Conflict(f"{dataset_id!r} is a built-in dataset; only uploads can be changed")
    return dataset_store.get_dataset(session, dataset_id, tenant=tenant)


DatasetDep = Annotated[Dataset, Depends(load_dataset)]
