"""Who may call what, walked over every route the app has (`app.routes`), so a new route is
covered by these tests without editing them:

- no key (or an unknown, revoked, expired or malformed one) is a 401, the public routes aside;
- each scope opens exactly its routes; any other is a 403 that names the scope lacking;
- another tenant's object answers exactly as an object that does not exist (404), on every route
  with an id or a name, in lists, in /predict and in a job spec's references;
- no key's secret ever reaches the logs.

The world: tenants `team-a` and `team-b`, each with a model named `digits-mlp` (names are per
tenant), and `team-a` alone with a model `a-model` (aliased `production`), an uploaded dataset and
an uploaded weights file."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tas.core.models import build_model
from tas.core.spec import ModelSpec
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store import registry as registry_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import ApiKey, utcnow
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.registry import Registry
from tests.helpers.specs import iris_spec

#: Routes anyone may call: liveness, readiness and the API's documentation.
PUBLIC = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
#: The dashboard's pages and sign-in (and `/`, which redirects to them): frames that hold no
#: tenant's data, which their scripts then read from the API routes walked here.
DASHBOARD = ("/ui/", "/ui")

#: The scope each part of the API needs, by path prefix: (read scopes, write scope). A route under
#: a new prefix fails `test_every_route_has_a_scope_rule` until it is given one here.
SCOPE_RULES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "/jobs": (("jobs:read",), "jobs:write"),
    "/searches": (("jobs:read",), "jobs:write"),
    "/datasets": (("datasets:read",), "datasets:write"),
    "/weights": (("datasets:read",), "datasets:write"),
    "/models": (("models:read",), "models:write"),
    "/predict": (("predict",), "predict"),
    "/workers": (("jobs:read",), None),
    "/keys": (("admin",), "admin"),
    "/audit": (("admin",), None),
    "/metrics": (("admin", "metrics:read"), None),
    "/session": (tuple(key_store.SCOPES), None),
}

#: Path parameters of a thing that exists nowhere.
MISSING = {
    "job_id": "0" * 32,
    "dataset_id": "0" * 32,
    "weights_id": "0" * 16,
    "name": "no-such-model",
    "ref": "no-such-model",
    "version": "7",
    "alias": "nope",
    "key_id": "0" * 16,
    "search_id": "0" * 32,
}

#: Bodies that pass validation, so a write reaches its lookup (404) instead of stopping at 422.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/jobs/{job_id}"): {"tags": {"k": "v"}},
    ("PUT", "/models/{name}/aliases/{alias}"): {"version": 1},
    ("POST", "/jobs/{job_id}/resume"): {"max_minutes": 5},
}

ALL_BUT_ADMIN = sorted(key_store.ALL_SCOPES - {"admin"})


@dataclass
class World:
    app: FastAPI
    client: TestClient
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    #: team-a's objects, as path parameters.
    a: dict[str, str] = field(default_factory=dict)
    b_job: str = ""

    def key(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route, documented or not (/metrics is not)."""
    ops = []
    for route in iter_route_contexts(app.routes):
        path, methods = route.path, route.methods
        if path is None or not methods or path in PUBLIC or path == "/":
            continue
        if path.startswith(DASHBOARD):
            continue
        ops += [(m, path) for m in sorted(methods - {"HEAD"})]
    return sorted(ops)


def params_of(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def fill(path: str, values: dict[str, str]) -> str:
    for name in params_of(path):
        assert name in values, f"the walker has no value for the path parameter {name!r}: add one"
        path = path.replace("{" + name + "}", values[name])
    return path


def call(
    world: World, method: str, path: str, values: dict[str, str], headers: dict[str, str]
) -> Any:
    body = BODIES.get((method, path), {}) if method in {"POST", "PUT", "PATCH"} else None
    return world.client.request(method, fill(path, values), json=body, headers=headers)


def scopes_for(method: str, path: str) -> tuple[str, ...]:
    rule = next((r for prefix, r in SCOPE_RULES.items() if path.startswith(prefix)), None)
    assert rule is not None, f"{path} has no scope rule"
    reads, write = rule
    return reads if method == "GET" or write is None else (write,)


def make_key(settings: Settings, tenant: str, scopes: list[str], **kw: Any) -> tuple[str, str]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            row, token = key_store.create_key(
                s, key_store.server_secret(settings), tenant=tenant, scopes=scopes, **kw
            )
            return row.id, token
    finally:
        engine.dispose()


def csv_bytes() -> bytes:
    rng = np.random.default_rng(0)
    rows = ["f1,f2,f3,f4,label"]
    for i in range(30):
        x = rng.normal(size=4) + i % 3
        rows.append(",".join(f"{v:.3f}" for v in x) + f",c{i % 3}")
    return ("\n".join(rows) + "\n").encode()


def weights_bytes() -> bytes:
    model = build_model(ModelSpec(arch="mlp", hidden=[8]), (4,), 3)
    return safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture
def world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[World]:
    caplog.set_level(logging.DEBUG)
    settings = migrated_settings(tmp_path)
    reg = Registry(settings)
    iris = {"input_shape": (4,), "out_dim": 3, "hidden": (8,), "normalized": False}
    a_shared = reg.add("digits-mlp", tenant="team-a", **iris)
    a_model = reg.add("a-model", tenant="team-a", **iris)
    b_shared = reg.add("digits-mlp", tenant="team-b", seed=1, **iris)
    with reg.sessions() as s:
        registry_store.set_alias(s, "a-model", "production", 1, tenant="team-a")
        s.commit()
    app = make_app(settings)
    with running_client(app) as client:
        w = World(app, client, settings)
        key_ids = {}
        for tenant in ("team-a", "team-b"):
            key_ids[tenant], w.tokens[tenant] = make_key(
                settings, tenant, ALL_BUT_ADMIN, name=f"{tenant} all"
            )
        _, w.tokens["admin"] = make_key(settings, "ops", ["admin"])
        for scope in key_store.SCOPES:
            _, w.tokens[scope] = make_key(settings, "team-a", [scope])
        r = client.post(
            "/datasets",
            files={"file": ("a.csv", csv_bytes(), "text/csv")},
            data={"name": "a-data"},
            headers=w.key("team-a"),
        )
        assert r.status_code == 201, r.text
        weights = client.post(
            "/weights",
            files={"file": ("a.safetensors", weights_bytes(), "application/octet-stream")},
            headers=w.key("team-a"),
        )
        assert weights.status_code == 201, weights.text
        search = client.post(
            "/searches",
            json={
                "name": "a-search",
                "spec": iris_spec(),
                "space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.1}},
                "objective": {"metric": "val_accuracy"},
                "max_trials": 2,
            },
            headers=w.key("team-a"),
        )
        assert search.status_code == 201, search.text
        w.a = {
            "search_id": search.json()["id"],
            "job_id": a_model.job_id,
            "dataset_id": r.json()["id"],
            "weights_id": weights.json()["id"],
            "name": "a-model",
            "ref": "a-model",
            "version": "1",
            "alias": "production",
            "key_id": key_ids["team-a"],
        }
        w.b_job = b_shared.job_id
        assert a_shared.job_id != b_shared.job_id
        yield w
    secrets = [t.split("_", 2)[2] for t in w.tokens.values()]
    leaked = [s for s in secrets if s in caplog.text]
    assert not leaked, "a key's secret reached the logs"


def test_every_route_has_a_scope_rule(world: World) -> None:
    ops = operations(world.app)
    assert (
        ("POST", "/jobs") in ops
        and ("GET", "/metrics") in ops
        and ("DELETE", "/keys/{key_id}") in ops
    )
    for method, path in ops:
        scopes_for(method, path)


def test_every_route_but_the_public_ones_needs_a_key(world: World) -> None:
    """No header, a malformed one, another scheme, an unknown key: the same 401 every time."""
    token = world.tokens["team-a"]
    wrong_secret = token[:-1] + ("B" if token.endswith("A") else "A")
    bad = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {world.tokens['team-a']}"},
        {"Authorization": "Bearer tas_0123456789abcdef_" + "x" * 43},
        {"Authorization": f"Bearer {wrong_secret}"},
    ]
    for method, path in operations(world.app):
        for headers in bad:
            r = call(world, method, path, world.a, headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert world.tokens["team-a"] not in r.text
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert world.client.get(path).status_code == 200, path


def test_revoked_and_expired_keys_are_refused_like_unknown_ones(world: World) -> None:
    admin = world.key("admin")
    key_id, token = make_key(world.settings, "team-a", ["jobs:read"])
    assert (
        world.client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    unknown = world.client.get(
        "/jobs", headers={"Authorization": "Bearer tas_" + "1" * 16 + "_" + "y" * 43}
    )
    assert world.client.delete(f"/keys/{key_id}", headers=admin).status_code == 200
    revoked = world.client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
    assert (revoked.status_code, revoked.json()) == (401, unknown.json())

    expired_id, expired = make_key(world.settings, "team-a", ["jobs:read"], expires_days=1)
    engine = make_engine(world.settings.resolved_database_url)
    with unit_of_work(make_sessionmaker(engine)) as s:
        row = s.get(ApiKey, expired_id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    engine.dispose()
    r = world.client.get("/jobs", headers={"Authorization": f"Bearer {expired}"})
    assert (r.status_code, r.json()) == (401, unknown.json())

    listed = {k["id"]: k for k in world.client.get("/keys", headers=admin).json()["items"]}
    assert listed[key_id]["revoked_at"] is not None
    assert listed[key_id]["last_used_at"] is not None
    assert all("key" not in k and "secret_hash" not in k for k in listed.values())


def test_each_scope_opens_exactly_its_routes(world: World) -> None:
    """Calls on things that do not exist: an allowed scope gets past the check (to a 404, a 422
    or a 200) and changes nothing; any other scope is a 403 naming the one it lacks."""
    for method, path in operations(world.app):
        needed = scopes_for(method, path)
        for scope in key_store.SCOPES:
            r = call(world, method, path, MISSING, world.key(scope))
            if scope in needed:
                assert r.status_code not in (401, 403), (method, path, scope, r.text)
            else:
                assert r.status_code == 403, (method, path, scope, r.text)
                assert any(repr(s) in r.json()["detail"] for s in needed), r.text


def test_another_tenants_object_is_a_404_like_one_that_does_not_exist(world: World) -> None:
    """team-b (every scope but admin) on team-a's objects, on every route with a path parameter:
    the answer is the one for an object that exists nowhere, byte for byte once the ids are
    swapped, and team-a's objects are all still there afterwards."""
    walked = 0
    for method, path in operations(world.app):
        if not params_of(path) or path.startswith("/keys"):
            continue
        theirs = call(world, method, path, world.a, world.key("team-b"))
        nowhere = call(world, method, path, MISSING, world.key("team-b"))
        assert theirs.status_code == 404, (method, path, theirs.text)
        text = theirs.text
        for name in params_of(path):
            text = text.replace(world.a[name], MISSING[name])
        assert (theirs.status_code, text) == (nowhere.status_code, nowhere.text), (method, path)
        walked += 1
    assert walked >= 15
    a = world.key("team-a")
    for path in (
        f"/jobs/{world.a['job_id']}",
        f"/datasets/{world.a['dataset_id']}",
        f"/weights/{world.a['weights_id']}",
        f"/searches/{world.a['search_id']}",
        "/models/a-model",
        "/models/a-model@production/card",
    ):
        assert world.client.get(path, headers=a).status_code == 200, path
    aliases = world.client.get("/models/a-model", headers=a).json()["aliases"]
    assert aliases == {"production": 1}


def test_lists_show_only_the_callers_objects(world: World) -> None:
    a, b = world.key("team-a"), world.key("team-b")
    b_jobs = {j["id"] for j in world.client.get("/jobs", headers=b).json()["items"]}
    a_jobs = {j["id"] for j in world.client.get("/jobs", headers=a).json()["items"]}
    assert world.b_job in b_jobs and world.a["job_id"] in a_jobs
    assert not b_jobs & a_jobs
    b_data = world.client.get("/datasets", headers=b).json()["items"]
    assert world.a["dataset_id"] not in {d["id"] for d in b_data}
    assert world.a["dataset_id"] in {
        d["id"] for d in world.client.get("/datasets", headers=a).json()["items"]
    }
    assert [m["name"] for m in world.client.get("/models", headers=b).json()] == ["digits-mlp"]
    assert sorted(m["name"] for m in world.client.get("/models", headers=a).json()) == [
        "a-model",
        "digits-mlp",
    ]


def test_predict_sees_only_the_callers_models(world: World) -> None:
    a, b = world.key("team-a"), world.key("team-b")
    x = [[0.1, 0.2, 0.3, 0.4]]
    for ref in (world.a["job_id"], "a-model", "a-model:1", "a-model@production"):
        r = world.client.post("/predict", json={"model": ref, "inputs": x}, headers=b)
        assert r.status_code == 404, (ref, r.text)
        assert (
            world.client.post("/predict", json={"model": ref, "inputs": x}, headers=a).status_code
            == 200
        )
    mine = world.client.post("/predict", json={"model": "digits-mlp", "inputs": x}, headers=b)
    assert mine.status_code == 200, mine.text
    assert mine.json()["model"]["job_id"] == world.b_job


def test_a_spec_cannot_reach_another_tenants_data_or_weights(world: World) -> None:
    """team-b naming team-a's dataset, job, model or weights in a spec is refused exactly as a
    reference to nothing; team-a's own spec with the same reference is accepted."""
    a, b = world.key("team-a"), world.key("team-b")
    job, data, weights = world.a["job_id"], world.a["dataset_id"], world.a["weights_id"]
    refs = [
        ("dataset", {"id": data}, {"id": MISSING["dataset_id"]}),
        ("init_from", job, MISSING["job_id"]),
        ("init_from", "a-model", "no-such-model"),
        ("init_from", "a-model:1", "no-such-model:1"),
        ("init_from", "a-model@production", "no-such-model@production"),
        ("init_from", f"weights:{weights}", f"weights:{MISSING['weights_id']}"),
    ]

    def spec(what: str, ref: Any) -> dict[str, Any]:
        s = iris_spec()
        if what == "dataset":
            s["dataset"] = ref
        else:
            s["model"]["init_from"] = ref
        return s

    for what, theirs, nowhere in refs:
        refused = world.client.post("/jobs", json=spec(what, theirs), headers=b)
        missing = world.client.post("/jobs", json=spec(what, nowhere), headers=b)
        assert refused.status_code in (404, 422), (what, refused.text)
        text = refused.text.replace(job, MISSING["job_id"]).replace(data, MISSING["dataset_id"])
        text = text.replace(weights, MISSING["weights_id"]).replace("a-model", "no-such-model")
        assert (refused.status_code, text) == (missing.status_code, missing.text)
        accepted = world.client.post("/jobs", json=spec(what, theirs), headers=a)
        assert accepted.status_code == 201, (what, accepted.text)


def test_writes_are_audited_with_their_key(world: World) -> None:
    admin = world.key("admin")
    r = world.client.put(
        "/models/a-model/aliases/staging", json={"version": 1}, headers=world.key("team-a")
    )
    assert r.status_code == 200, r.text
    events = world.client.get("/audit", params={"tenant": "team-a"}, headers=admin).json()["items"]
    actions = [e["action"] for e in events]
    assert actions[0] == "PUT /models/{name}/aliases/{alias}"
    assert events[0]["target"] == "a-model/staging"
    assert "POST /datasets" in actions and "POST /weights" in actions
    team_a_key = {
        k["name"]: k["id"] for k in world.client.get("/keys", headers=admin).json()["items"]
    }
    assert events[0]["key_id"] == team_a_key["team-a all"]
    assert world.client.get("/audit", headers=world.key("team-a")).status_code == 403
    b_events = world.client.get("/audit", params={"tenant": "team-b"}, headers=admin).json()
    assert b_events["items"] == []


def test_with_no_key_the_server_is_open_until_the_first_key(tmp_path: Path) -> None:
    """A laptop's server: no key, every caller is `default` with every scope. Creating a key
    (here through the API, as the open server's admin) closes it for good."""
    app = make_app(migrated_settings(tmp_path, auth_cache_s=0))
    with running_client(app) as client:
        assert client.get("/jobs").status_code == 200
        assert client.post("/jobs", json=iris_spec()).status_code == 201
        r = client.post("/keys", json={"tenant": "default", "scopes": ["jobs:read"]})
        assert r.status_code == 201, r.text
        token = r.json()["key"]
        assert token.startswith("tas_") and r.headers["location"] == f"/keys/{r.json()['id']}"
        assert client.get("/jobs").status_code == 401
        jobs = client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).json()["items"]
        assert len(jobs) == 1
        assert client.get("/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_key_bodies_are_checked(world: World) -> None:
    admin = world.key("admin")
    for body, field_name in [
        ({"tenant": "Team A", "scopes": ["jobs:read"]}, "tenant"),
        ({"tenant": "t", "scopes": ["jobs:fly"]}, "scopes"),
        ({"tenant": "t", "scopes": []}, "scopes"),
        ({"tenant": "t", "scopes": ["predict"], "expires_days": -1}, "expires_days"),
    ]:
        r = world.client.post("/keys", json=body, headers=admin)
        assert r.status_code == 422, r.text
        assert field_name in str(r.json()["detail"])
    assert world.client.delete("/keys/" + "f" * 16, headers=admin).status_code == 404


def test_the_server_secret_file_is_private(world: World) -> None:
    path = Path(world.settings.data_dir) / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    with open(path) as f:
        assert len(f.read().strip()) == 64
