"""API keys: creation, lookup and revocation, and the server secret their hashes are keyed with.

A key is `tas_<id>_<secret>`. The `tas_` prefix lets secret scanners recognise a leaked key; the
id is public (listed, audited); the secret is stored only as HMAC-SHA256 under the server secret,
so neither the database nor a backup of it yields a usable key. The secret is random (256 bits),
so a fast keyed hash is enough: there is nothing to brute-force that a slow password hash would
protect."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from tas.errors import InvalidInput, KeyNotFound, MissingScope
from tas.settings import Settings
from tas.store import pagination
from tas.store.orm import ApiKey, utcnow

#: What each scope allows. `admin` manages keys and reads the audit log for every tenant; it is
#: not a superset of the others, so an operator's key cannot read a team's models by accident.
SCOPES: dict[str, str] = {
    "jobs:read": "list and read jobs, their metrics, checkpoints, events; list workers",
    "jobs:write": "submit, change, cancel, resume, clone and delete jobs",
    "datasets:read": "list and read datasets and weights files",
    "datasets:write": "upload and delete datasets, upload weights files",
    "models:read": "list models, read cards, download models",
    "models:write": "move aliases, delete versions",
    "predict": "POST /predict",
    "metrics:read": "GET /metrics (Prometheus)",
    "admin": "create, list and revoke API keys of every tenant; read the audit log",
}
ALL_SCOPES = frozenset(SCOPES)

#: The tenant of every caller while no key exists (a single-user server on loopback).
DEFAULT_TENANT = "default"

#: Tenant names become path prefixes and labels: lower-case letters, digits, `-` and `_`.
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT = re.compile(TENANT_PATTERN)
_TOKEN = re.compile(r"^tas_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")
_SECRET_FILE = "secret.key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose objects they see and what they may do."""

    tenant: str
    scopes: frozenset[str]
    #: None when no key exists and the server is open (every caller is the default tenant).
    key_id: str | None = None

    def require(self, *any_of: str) -> None:
        if not self.scopes.intersection(any_of):
            raise MissingScope(any_of, sorted(self.scopes))


OPEN = Principal(DEFAULT_TENANT, ALL_SCOPES, None)


def server_secret(settings: Settings) -> bytes:
    """TAS_SECRET_KEY, or a random secret kept in `<data_dir>/secret.key` (created 0600 on first
    use). Every process that checks keys (the API, `tas keys`) must read the same one."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = Path(settings.data_dir) / _SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def _hash(secret: bytes, key_secret: str) -> str:
    return hmac.new(secret, key_secret.encode(), hashlib.sha256).hexdigest()


def check_tenant(tenant: str, loc: tuple[str, ...] = ("body", "tenant")) -> str:
    if not _TENANT.match(tenant):
        raise InvalidInput(
            [(loc, "a tenant is 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
        )
    return tenant


def check_scopes(scopes: Iterable[str], loc: tuple[str, ...] = ("body", "scopes")) -> list[str]:
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        got = f"unknown: {', '.join(unknown)}; " if unknown else "none given; "
        raise InvalidInput([(loc, f"{got}scopes are {', '.join(SCOPES)}")])
    return wanted


def create_key(
    session: Session,
    secret: bytes,
    *,
    tenant: str,
    scopes: Iterable[str],
    name: str | None = None,
    expires_days: float | None = None,
) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which exists nowhere else: show it once."""
    check_tenant(tenant)
    wanted = check_scopes(scopes)
    key_id = secrets.token_hex(8)
    key_secret = secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiKey(
        id=key_id,
        tenant=tenant,
        name=name,
        scopes=wanted,
        secret_hash=_hash(secret, key_secret),
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days is not None else None,
    )
    session.add(row)
    session.flush()
    return row, f"tas_{key_id}_{key_secret}"


def authenticate(
    session: Session, secret: bytes, token: str, now: datetime | None = None
) -> ApiKey | None:
    """The key row `token` names if its secret matches and it is neither revoked nor expired.
    The hash is computed and compared (in constant time) whether or not the id exists, so the
    time taken does not tell an unknown id from a wrong secret."""
    match = _TOKEN.match(token)
    key_id, key_secret = match.groups() if match else ("", token)
    row = session.get(ApiKey, key_id) if match else None
    expected = row.secret_hash if row is not None else "0" * 64
    valid = hmac.compare_digest(_hash(secret, key_secret), expected)
    if row is None or not valid:
        return None
    now = now or utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row


def active_key(session: Session, key_id: str, now: datetime | None = None) -> ApiKey | None:
    """The key row if it is neither revoked nor expired: what a browser session made from it
    checks, since the session holds the key's id, not its secret."""
    row = session.get(ApiKey, key_id)
    now = now or utcnow()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    return row


def touch(session: Session, key_id: str, now: datetime | None = None) -> None:
    """Record a key's use (`last_used_at`)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now or utcnow()))


def any_key(session: Session) -> bool:
    """Whether a key was ever created. Revoking every key does not reopen the server: once keys
    are in use, a caller without one is refused for good."""
    return bool(session.scalar(select(exists().where(ApiKey.id.is_not(None)))))


def list_keys(
    session: Session, *, tenant: str | None, limit: int, cursor: str | None
) -> pagination.Page[ApiKey]:
    """One page of keys, newest first; every tenant's when `tenant` is None (keys are listed by
    admins). Paged like every other list, so an answer's size does not grow with the table."""
    query = select(ApiKey)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return pagination.paginate(
        session,
        query,
        created_col=ApiKey.created_at,
        id_col=ApiKey.id,
        limit=limit,
        cursor=cursor,
    )


def all_keys(session: Session, tenant: str | None = None, page: int = 200) -> Iterator[ApiKey]:
    """Every key, newest first, read a page at a time (what `tas keys list` prints)."""
    cursor: str | None = None
    while True:
        got = list_keys(session, tenant=tenant, limit=page, cursor=cursor)
        yield from got.items
        if got.next_cursor is None:
            return
        cursor = got.next_cursor


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key (idempotent: revoking it again keeps the first time)."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFound(key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
