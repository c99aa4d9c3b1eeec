"""The model registry: versions, aliases (the deploy step), deletion, cards and downloads (by
version, or by a reference: `name@alias`, `name:version`, `name`).

Names and aliases in the path are checked against the pattern job names follow, so `../`, encoded
slashes and backslashes never reach a query, and files are read only from the directory the
registry row names, after a containment check (a path built from a request never leaves the store)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import AuditedRouter, ServingDep, SessionDep, TenantDep, requires
from app.api.query import StrictQuery
from app.schemas.models import (
    NAME_PATTERN,
    AliasEventOut,
    AliasIn,
    AliasOut,
    ModelOut,
    ModelVersionOut,
)
from app.services.serving import Serving
from tas.core import export
from tas.core.artifact import read_card
from tas.store import registry as registry_store
from tas.store.orm import AuditEvent, ModelAlias, ModelVersion
from tas.store.unit_of_work import after_commit

router = AuditedRouter(
    prefix="/models", tags=["models"], dependencies=[requires("models:read", "models:write")]
)

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The model's name (its jobs' name).")]
Alias = Annotated[
    str, Path(pattern=NAME_PATTERN, description="An alias, e.g. production.", examples=["prod"])
]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
Ref = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN[:-1] + r"(:[0-9]{1,10}|@[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
        description="`name@alias`, `name:version` or `name` (its latest version).",
        examples=["digits-mlp@production"],
    ),
]
Format = Annotated[Literal["safetensors", "onnx"], Query()]


#: Versions of each model GET /models shows (its newest); GET /models/{name} pages through all.
LISTED_VERSIONS = 100

#: The `Link` header of a page that has a next one.
_NEXT_PAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "Link": {
                "description": 'The next page (rel="next"), when there is one',
                "schema": {"type": "string"},
            }
        }
    }
}


def _model(
    name: str,
    versions: list[ModelVersion],
    aliases: list[ModelAlias],
    latest: int | None = None,
) -> ModelOut:
    """`latest`: the model's newest version when `versions` is a page that may not hold it."""
    by_version: dict[int, list[str]] = {}
    for a in aliases:
        by_version.setdefault(a.version, []).append(a.alias)
    out = [
        ModelVersionOut.model_validate(v).model_copy(
            update={"aliases": by_version.get(v.version, [])}
        )
        for v in sorted(versions, key=lambda v: -v.version)
    ]
    return ModelOut(
        name=name,
        latest_version=latest if latest is not None else out[0].version,
        aliases={a.alias: a.version for a in aliases},
        versions=out,
    )


@router.get("", response_model=list[ModelOut], dependencies=[StrictQuery], responses=_NEXT_PAGE)
def list_models(
    session: SessionDep,
    tenant: TenantDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=NAME_PATTERN, description="The last model name of the previous page."),
    ] = None,
) -> list[ModelOut]:
    """Your models in name order, each with its newest versions (at most LISTED_VERSIONS; GET
    /models/{name} pages through all of them): at most `limit` models, and a `Link` header
    (rel="next") when there are more."""
    by_name = registry_store.versions_by_name(
        session, tenant=tenant, after=cursor, limit=limit + 1, per_name=LISTED_VERSIONS
    )
    names = list(by_name)[:limit]
    if len(by_name) > limit:
        response.headers["Link"] = f'</models?limit={limit}&cursor={names[-1]}>; rel="next"'
    aliases: dict[str, list[ModelAlias]] = {}
    for a in registry_store.model_aliases(session, tenant=tenant, names=names):
        aliases.setdefault(a.name, []).append(a)
    return [_model(name, by_name[name], aliases.get(name, [])) for name in names]


@router.get("/{name}", response_model=ModelOut, dependencies=[StrictQuery], responses=_NEXT_PAGE)
def get_model(
    name: Name,
    session: SessionDep,
    tenant: TenantDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="The last version of the previous page."),
    ] = None,
) -> ModelOut:
    """The model's aliases and its versions, newest first: at most `limit` of them, and a `Link`
    header (rel="next") when there are older ones."""
    versions = registry_store.model_versions(
        session, name, tenant=tenant, before=cursor, limit=limit + 1
    )
    if len(versions) > limit:
        versions = versions[:limit]
        response.headers["Link"] = (
            f'</models/{name}?limit={limit}&cursor={versions[-1].version}>; rel="next"'
        )
    latest = None if cursor is None else registry_store.latest_version(session, name, tenant=tenant)
    aliases = registry_store.model_aliases(session, tenant=tenant, name=name)
    return _model(name, versions, aliases, latest)


@router.put("/{name}/aliases/{alias}", response_model=AliasOut)
def set_alias(
    name: Name,
    alias: Alias,
    body: AliasIn,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    serving: ServingDep,
) -> AliasOut:
    """Point `name@alias` at a version — the deploy step. The version is loaded before this
    returns, and the next `/predict` for `name@alias` uses it; no restart."""
    row, mv = registry_store.set_alias(session, name, alias, body.version, tenant=tenant)
    request.state.audit_detail = {"version": body.version}
    after_commit(session, serving.registry_changed, warm=mv.model_dir)
    return AliasOut(name=name, alias=alias, version=row.version, updated_at=row.updated_at)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(
    name: Name,
    alias: Alias,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    serving: ServingDep,
) -> Response:
    version = registry_store.delete_alias(session, name, alias, tenant=tenant)
    request.state.audit_detail = {"version": version}
    after_commit(session, serving.registry_changed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(
    name: Name,
    version: Version,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    serving: ServingDep,
) -> Response:
    """Drop a version and its aliases, and evict it from the serving cache; `/predict` with its
    job id answers 404 from now on. The job remains; with an artifact store (TAS_ARTIFACT_URL)
    the version's model objects are deleted, locally its directory stays with the job."""
    aliases = registry_store.model_aliases(session, tenant=tenant, name=name)
    request.state.audit_detail = {"aliases": [a.alias for a in aliases if a.version == version]}
    mv = registry_store.delete_version(
        session, name, version, tenant=tenant, store=serving.artifacts.store
    )
    after_commit(session, serving.registry_changed, evict=mv.model_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _alias_set(e: AuditEvent) -> list[AliasEventOut]:
    alias = (e.target or "").partition("/")[2]
    version = (e.detail or {}).get("version")
    return [AliasEventOut(at=e.created_at, alias=alias, action="set", version=version)]


def _alias_deleted(e: AuditEvent) -> list[AliasEventOut]:
    alias = (e.target or "").partition("/")[2]
    version = (e.detail or {}).get("version")
    return [AliasEventOut(at=e.created_at, alias=alias, action="deleted", version=version)]


def _version_deleted(e: AuditEvent) -> list[AliasEventOut]:
    """A deleted version takes its aliases along: one event for each (a deletion recorded before
    the aliases were kept in the audit log names none)."""
    version = int((e.target or "").partition("/")[2])
    return [
        AliasEventOut(at=e.created_at, alias=alias, action="version_deleted", version=version)
        for alias in (e.detail or {}).get("aliases", [])
    ]


#: The audited writes that change a model's aliases, as `record_write` names them (method and
#: route template), each with how its audit row reads as alias events.
_ALIAS_ACTIONS: dict[str, Callable[[AuditEvent], list[AliasEventOut]]] = {
    "PUT /models/{name}/aliases/{alias}": _alias_set,
    "DELETE /models/{name}/aliases/{alias}": _alias_deleted,
    "DELETE /models/{name}/versions/{version}": _version_deleted,
}


@router.get("/{name}/alias-history", response_model=list[AliasEventOut], dependencies=[StrictQuery])
def alias_history(
    name: Name,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many changes.")] = 100,
) -> list[AliasEventOut]:
    """The model's alias changes, newest first: each alias set or moved (to which version),
    deleted, or removed with its version. Read from the audit log, which records every write."""
    registry_store.model_versions(session, name, tenant=tenant, limit=1)  # an unknown model: 404
    events: list[AliasEventOut] = []
    before: int | None = None
    # A row can stand for no event (a version deleted with no alias on it) or several, so rows
    # are read in pages until `limit` events are found or the log is exhausted.
    while len(events) < limit:
        rows = registry_store.alias_events(
            session, name, tenant=tenant, actions=list(_ALIAS_ACTIONS), limit=limit, before=before
        )
        for row in rows:
            events += _ALIAS_ACTIONS[row.action](row)
        if len(rows) < limit:
            break
        before = rows[-1].id
    return events[:limit]


def _card(serving: Serving, mv: ModelVersion) -> dict[str, Any]:
    about = {"name": mv.name, "version": mv.version, "job_id": mv.job_id}
    with serving.model_files(mv.model_dir) as model_dir:
        return export.export_card(read_card(model_dir), about)


async def _download(
    serving: Serving, lookup: Callable[[Session], ModelVersion], format: str
) -> Response:
    """The export of the version `lookup` finds, built off the event loop, its card naming it."""

    def build() -> tuple[bytes, str]:
        with serving.sessions() as session:
            mv = lookup(session)
            ref = mv.model_dir
            about = {"name": mv.name, "version": mv.version, "job_id": mv.job_id}
        make = export.onnx_bytes if format == "onnx" else export.safetensors_with_card
        with serving.model_files(ref) as model_dir:
            data = make(model_dir, about)
        return data, f"{about['name']}-v{about['version']}.{format}"

    data, filename = await run_in_threadpool(build)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


_DOWNLOAD_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "safetensors (the card in `__metadata__['tas.card']`) or ONNX (the "
        "card in `metadata_props['tas.card']`)",
    }
}


@router.get("/{name}/versions/{version}/card", dependencies=[StrictQuery])
def get_card(
    name: Name, version: Version, session: SessionDep, tenant: TenantDep, serving: ServingDep
) -> dict[str, Any]:
    """The model card for use outside tas: which model (name, version, job id), architecture,
    input shape, classes or feature names, preprocessing (normalisation statistics, image
    handling), how to read the outputs, metrics."""
    return _card(serving, registry_store.get_version(session, name, version, tenant=tenant))


@router.get(
    "/{name}/versions/{version}/download",
    response_class=Response,
    responses=_DOWNLOAD_DOC,
    dependencies=[StrictQuery],
)
async def download(
    name: Name,
    version: Version,
    tenant: TenantDep,
    serving: ServingDep,
    format: Format = "safetensors",
) -> Response:
    """The weights with their model card embedded, or an ONNX export (built on request; its
    outputs match PyTorch's)."""
    return await _download(
        serving, lambda s: registry_store.get_version(s, name, version, tenant=tenant), format
    )


@router.get("/{ref}/card", dependencies=[StrictQuery])
def get_card_by_ref(
    ref: Ref, session: SessionDep, tenant: TenantDep, serving: ServingDep
) -> dict[str, Any]:
    """The card of `name@alias` (what the alias points at now), `name:version` or `name` (the
    latest version): the same card as `/models/{name}/versions/{version}/card`."""
    return _card(serving, registry_store.resolve_model(session, ref, tenant=tenant))


@router.get(
    "/{ref}/download", response_class=Response, responses=_DOWNLOAD_DOC, dependencies=[StrictQuery]
)
async def download_by_ref(
    ref: Ref, tenant: TenantDep, serving: ServingDep, format: Format = "safetensors"
) -> Response:
    """The download of `name@alias`, `name:version` or `name` (the latest version); the file is
    named after the version it resolved to."""
    return await _download(
        serving, lambda s: registry_store.resolve_model(s, ref, tenant=tenant), format
    )
