"""API keys in the store: what is kept (a keyed hash, never the secret), what authenticates, and
the server secret the hashes are keyed with; and the `tas keys` commands over it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from tas.cli import cli
from tas.errors import InvalidInput, KeyNotFound
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import ApiKey, AuditEvent, utcnow
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path)


@pytest.fixture
def sessions(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.resolved_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_only_a_keyed_hash_of_the_secret_is_stored(settings: Settings, sessions) -> None:  # type: ignore[no-untyped-def]
    secret = key_store.server_secret(settings)
    with unit_of_work(sessions) as s:
        row, token = key_store.create_key(
            s, secret, tenant="team-a", scopes=["predict", "jobs:read"], name="ci"
        )
        key_id = row.id
    prefix, tid, key_secret = token.split("_", 2)
    assert (prefix, tid) == ("tas", key_id) and len(key_secret) >= 40
    with unit_of_work(sessions) as s:
        stored = s.scalars(select(ApiKey)).one()
        assert key_secret not in str(vars(stored)) and token not in str(vars(stored))
        assert stored.scopes == ["jobs:read", "predict"]
        found = key_store.authenticate(s, secret, token)
        assert found is not None and found.tenant == "team-a"
        assert key_store.authenticate(s, b"another server secret", token) is None
        assert (
            key_store.authenticate(s, secret, token[:-1] + ("A" if token[-1] != "A" else "B"))
            is None
        )
        assert key_store.authenticate(s, secret, f"tas_{'0' * 16}_{key_secret}") is None
        assert key_store.authenticate(s, secret, "not a key") is None


def test_revoked_and_expired_keys_do_not_authenticate(settings: Settings, sessions) -> None:  # type: ignore[no-untyped-def]
    secret = key_store.server_secret(settings)
    with unit_of_work(sessions) as s:
        revoked, revoked_token = key_store.create_key(s, secret, tenant="t", scopes=["predict"])
        _, expiring_token = key_store.create_key(
            s, secret, tenant="t", scopes=["predict"], expires_days=1
        )
        revoked_id = revoked.id
    with unit_of_work(sessions) as s:
        first = key_store.revoke_key(s, revoked_id).revoked_at
        assert key_store.revoke_key(s, revoked_id).revoked_at == first, "revoking is idempotent"
        assert key_store.authenticate(s, secret, revoked_token) is None
        assert key_store.authenticate(s, secret, expiring_token) is not None
        later = utcnow() + timedelta(days=1, seconds=1)
        assert key_store.authenticate(s, secret, expiring_token, now=later) is None
        with pytest.raises(KeyNotFound):
            key_store.revoke_key(s, "f" * 16)
        assert key_store.any_key(s), "a revoked key still closes the server"


def test_tenants_and_scopes_are_checked(settings: Settings, sessions) -> None:  # type: ignore[no-untyped-def]
    secret = key_store.server_secret(settings)
    with unit_of_work(sessions) as s:
        for tenant, scopes, says in [
            ("Team A", ["predict"], "tenant"),
            ("../etc", ["predict"], "tenant"),
            ("t", ["predict", "root"], "unknown: root"),
            ("t", [], "none given"),
        ]:
            with pytest.raises(InvalidInput) as err:
                key_store.create_key(s, secret, tenant=tenant, scopes=scopes)
            assert says in err.value.message


def test_the_server_secret_is_made_once_private_or_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    first = key_store.server_secret(settings)
    path = tmp_path / "var" / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_store.server_secret(settings) == first and len(first) == 64
    configured = Settings(data_dir=tmp_path / "var", secret_key=SecretStr("s" * 40))
    assert key_store.server_secret(configured) == b"s" * 40


def test_tas_keys_create_list_revoke(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, sessions: sessionmaker[Session]
) -> None:
    monkeypatch.setenv("TAS_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    made = runner.invoke(
        cli,
        [
            "keys",
            "create",
            "--tenant",
            "vision",
            "--scopes",
            "predict,jobs:read",
            "--expires",
            "30",
        ],
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    key_id, key_secret = token.split("_", 2)[1:]
    listed = runner.invoke(cli, ["keys", "list", "--tenant", "vision"])
    assert listed.exit_code == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert key_secret not in listed.output
    assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list"]).stdout
    unknown = runner.invoke(cli, ["keys", "revoke", "0" * 16])
    assert unknown.exit_code == 2 and "not found" in unknown.output
    bad = runner.invoke(cli, ["keys", "create", "--tenant", "vision", "--scopes", "fly"])
    assert bad.exit_code == 2 and "scopes are" in bad.output
    with unit_of_work(sessions) as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["cli keys create", "cli keys revoke"]


def test_tas_keys_list_prints_every_key_however_many_pages(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, sessions: sessionmaker[Session]
) -> None:
    """The API's pages stop at 200 keys; the CLI walks them all, so none goes missing."""
    secret = key_store.server_secret(settings)
    with unit_of_work(sessions) as s:
        made = [
            key_store.create_key(
                s, secret, tenant="vision" if i % 3 else "nlp", scopes=["predict"]
            )[0].id
            for i in range(205)
        ]
    with unit_of_work(sessions) as s:
        walked = [k.id for k in key_store.all_keys(s, "nlp", page=7)]
        first = key_store.list_keys(s, tenant=None, limit=200, cursor=None)
    assert sorted(walked) == sorted(made[::3]) and len(set(walked)) == len(walked) == 69
    assert len(first.items) == 200 and first.next_cursor is not None
    monkeypatch.setenv("TAS_DATA_DIR", str(settings.data_dir))
    listed = CliRunner().invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert all(key_id in listed.stdout for key_id in made)
