"""Who is calling: the `Authorization: Bearer` key checked against the key table, with a short
per-process cache so /predict's hot path does not read the database on every request.

The cache holds a checked key for `TAS_AUTH_CACHE_S`; a key revoked through this process is
dropped at once, one revoked through another (the CLI, another API replica) within that time.
While no key exists the server is open: every caller is the default tenant with every scope."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from tas.errors import Unauthorized
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store.keys import OPEN, Principal
from tas.store.orm import utcnow
from tas.store.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

#: How often a key's `last_used_at` is written at most: a write per request would serialise
#: /predict behind SQLite's write lock for a timestamp nobody needs to the millisecond.
TOUCH_EVERY = timedelta(seconds=60)

#: The browser session's cookie: `<key id>.<expiry, unix s>.<nonce>.<signature>`, signed with
#: the server secret. It holds the key's id, never its secret, so a stolen cookie dies with its
#: expiry or the key's revocation, and the key itself never sits in the browser.
SESSION_COOKIE = "tas_session"
#: The header a browser session's writes carry: the CSRF token `GET /session` answers, which is
#: derived from the cookie's nonce, so another site (which can make the browser send the cookie
#: but cannot read our responses) cannot know it.
CSRF_HEADER = "x-csrf-token"

_MISSING = "send an API key: 'Authorization: Bearer tas_…' (tas keys create makes one)"
_INVALID = "the API key is not valid (unknown, revoked or expired)"
_SESSION_ENDED = (
    "the browser session has ended (expired, signed out, or its key was revoked): sign in again"
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class _Entry:
    principal: Principal
    until: float


class Authenticator:
    def __init__(
        self, settings: Settings, readers: sessionmaker[Session], writers: sessionmaker[Session]
    ) -> None:
        self.secret = key_store.server_secret(settings)
        self.ttl = settings.auth_cache_s
        self.readers = readers
        self.writers = writers
        self._cache: dict[bytes, _Entry] = {}
        self._keys_exist = False
        self._checked_open_at = -float("inf")
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _cache_key(token: str) -> bytes:
        # The cache never holds a key in the clear.
        return hashlib.sha256(token.encode()).digest()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal if it can be told without the database (the hot path), else None."""
        now = time.monotonic()
        if authorization is None:
            if not self._keys_exist and now - self._checked_open_at < self.ttl:
                return OPEN
            return None
        entry = self._cache.get(self._cache_key(authorization))
        if entry is not None and entry.until > now:
            return entry.principal
        return None

    def authenticate(self, authorization: str | None) -> Principal:
        """Blocking: reads the key table. Raises Unauthorized for a missing or invalid key."""
        now = time.monotonic()
        if authorization is None:
            with unit_of_work(self.readers) as session:
                exist = key_store.any_key(session)
            with self._lock:
                self._keys_exist = self._keys_exist or exist
                self._checked_open_at = now
            if not self._keys_exist:
                return OPEN
            raise Unauthorized(_MISSING)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(_MISSING)
        with unit_of_work(self.readers) as session:
            row = key_store.authenticate(session, self.secret, token)
            principal = (
                Principal(row.tenant, frozenset(row.scopes), row.id) if row is not None else None
            )
            expires = row.expires_at if row is not None else None
        if principal is None:
            raise Unauthorized(_INVALID)
        until = now + self.ttl
        if expires is not None:
            until = min(until, now + (expires - utcnow()).total_seconds())
        with self._lock:
            self._keys_exist = True
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[self._cache_key(authorization)] = _Entry(principal, until)
        self._touch(principal)
        return principal

    def _touch(self, principal: Principal) -> None:
        assert principal.key_id is not None
        now = time.monotonic()
        last = self._touched.get(principal.key_id)
        if last is not None and now - last < TOUCH_EVERY.total_seconds():
            return
        self._touched[principal.key_id] = now
        try:
            with unit_of_work(self.writers) as session:
                key_store.touch(session, principal.key_id)
        except SQLAlchemyError:
            # A timestamp is not worth failing the request over (a writer holding SQLite's
            # lock past the busy timeout): the next minute's request writes it.
            log.warning("could not record the use of key %s", principal.key_id, exc_info=True)

    def _sign(self, purpose: str, *parts: str) -> str:
        message = "|".join((purpose, *parts)).encode()
        return _b64(hmac.new(self.secret, message, hashlib.sha256).digest())

    def open_session(self, token: str, hours: float) -> tuple[str, Principal]:
        """Blocking: checks `token` (an API key) and answers the session cookie's value and the
        key's principal. A session lasts `hours`, and never past its key's own expiry."""
        principal = self.authenticate(f"Bearer {token}")
        if principal.key_id is None:
            raise Unauthorized(_INVALID)
        expires = int(time.time() + hours * 3600)
        nonce = secrets.token_urlsafe(16)
        fields = (principal.key_id, str(expires), nonce)
        return ".".join((*fields, self._sign("session", *fields))), principal

    def csrf_token(self, cookie: str) -> str:
        """The token a session's writes must carry in `X-CSRF-Token` (see CSRF_HEADER)."""
        nonce = cookie.split(".")[2] if cookie.count(".") == 3 else ""
        return self._sign("csrf", nonce)

    def check_csrf(self, cookie: str, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(self.csrf_token(cookie), sent)

    def cached_session(self, cookie: str) -> Principal | None:
        entry = self._cache.get(self._cache_key("session " + cookie))
        if entry is not None and entry.until > time.monotonic():
            return entry.principal
        return None

    def session(self, cookie: str) -> Principal:
        """Blocking: the principal of a session cookie. The signature and expiry are checked
        first (no database read for a forged or stale cookie), then the key it was made from,
        which must still be valid: revoking a key ends its browser sessions."""
        parts = cookie.split(".")
        if len(parts) != 4 or not hmac.compare_digest(self._sign("session", *parts[:3]), parts[3]):
            raise Unauthorized(_SESSION_ENDED)
        key_id, expires_s, _ = parts[:3]
        left = int(expires_s) - time.time() if expires_s.isdigit() else -1.0
        if left <= 0:
            raise Unauthorized(_SESSION_ENDED)
        with unit_of_work(self.readers) as session:
            row = key_store.active_key(session, key_id)
            principal = (
                Principal(row.tenant, frozenset(row.scopes), row.id) if row is not None else None
            )
            key_expires = row.expires_at if row is not None else None
        if principal is None:
            raise Unauthorized(_SESSION_ENDED)
        now = time.monotonic()
        until = now + min(self.ttl, left)
        if key_expires is not None:
            until = min(until, now + (key_expires - utcnow()).total_seconds())
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[self._cache_key("session " + cookie)] = _Entry(principal, until)
        self._touch(principal)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from this process's cache at once."""
        with self._lock:
            self._cache = {k: e for k, e in self._cache.items() if e.principal.key_id != key_id}

    def keys_created(self) -> None:
        with self._lock:
            self._keys_exist = True
