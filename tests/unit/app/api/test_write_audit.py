"""Every write the API takes is in the audit log, and the routes added after the first security
work (searches, clone) keep tenants apart as POST /jobs does.

- Walked over `app.routes`: every route with a write method carries the audit hook
  (`deps.record_write`), so a write route added outside an `AuditedRouter` fails here.
- Each audited write, done once on a real object, leaves a row naming the key, its tenant, the
  route and the target; a write refused as another tenant's (404) leaves none.
- Searches list only the caller's; a search's base spec, and a clone's overrides, naming another
  tenant's dataset, job, model or weights are refused exactly as a reference to nothing.

The world is test_authorization's: tenants `team-a` (a model `a-model` aliased `production`, a
`digits-mlp`, an uploaded dataset, a weights file and a search) and `team-b` (its own
`digits-mlp`)."""

from __future__ import annotations

from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from app.api.deps import READ_METHODS, record_write
from tests.helpers.specs import iris_spec
from tests.unit.app.api import test_authorization as authz
from tests.unit.app.api.test_authorization import MISSING, World

#: test_authorization's world (the fixture), for the tests below.
world = authz.world

#: Write methods that change nothing a tenant owns, and why they are not audited.
NOT_AUDITED = {
    # a prediction reads a model; nothing is stored
    ("POST", "/predict"),
    # the dashboard's sign-in turns a key into a signed cookie (nothing stored); sign-out clears it
    ("POST", "/ui/signin"),
    ("POST", "/ui/signout"),
}


def _calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def write_routes(world: World) -> dict[tuple[str, str], bool]:
    """(method, path template) of every write route: whether it carries the audit hook."""
    out = {}
    for ctx in iter_route_contexts(world.app.routes):
        route = ctx.original_route
        for method in sorted(set(ctx.methods or ()) - READ_METHODS):
            assert ctx.path is not None
            audited = isinstance(route, APIRoute) and record_write in _calls(route.dependant)
            out[(method, ctx.path)] = audited
    return out


def test_every_write_route_is_audited(world: World) -> None:
    routes = write_routes(world)
    assert ("POST", "/searches") in routes and ("DELETE", "/keys/{key_id}") in routes
    unaudited = sorted(
        op for op, audited in routes.items() if not audited and op not in NOT_AUDITED
    )
    assert unaudited == [], "write routes without the audit hook (AuditedRouter)"
    assert not [op for op in NOT_AUDITED if routes.get(op)], "NOT_AUDITED lists an audited route"


def audit_rows(world: World, **params: str) -> list[dict[str, Any]]:
    """Every audit row (all pages), newest first."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "200", **params, **({"cursor": cursor} if cursor else {})}
        r = world.client.get("/audit", params=query, headers=world.key("admin"))
        assert r.status_code == 200, r.text
        rows += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return rows


def key_ids(world: World) -> dict[str, str]:
    """Key name -> id, every page of GET /keys (a list before keys were paged)."""
    body = world.client.get("/keys", params={"limit": "200"}, headers=world.key("admin")).json()
    items = body["items"] if isinstance(body, dict) else body
    return {k["name"]: k["id"] for k in items if k["name"]}


def test_each_write_leaves_a_row_naming_its_key_tenant_route_and_target(world: World) -> None:
    """Each audited write route, done once as team-a (keys as the admin): its row has the key's
    id, the tenant, the concrete path and the object it changed. A route added later fails
    here until it is done below too."""
    c, a, admin = world.client, world.key("team-a"), world.key("admin")
    done: dict[tuple[str, str], tuple[str, str]] = {}  # op -> (path called, expected target)

    def write(method: str, template: str, path: str, target: str, **kw: Any) -> Any:
        headers = admin if template.startswith("/keys") else a
        r = c.request(method, path, headers=headers, **kw)
        assert r.status_code < 300, (method, path, r.text)
        done[(method, template)] = (path, target)
        return r

    r = write("POST", "/jobs", "/jobs", "", json=iris_spec(name="audited"))
    job = r.json()["id"]
    done[("POST", "/jobs")] = ("/jobs", f"/jobs/{job}")
    write("PATCH", "/jobs/{job_id}", f"/jobs/{job}", job, json={"tags": {"k": "v"}})
    write("POST", "/jobs/{job_id}/cancel", f"/jobs/{job}/cancel", job)
    write("POST", "/jobs/{job_id}/resume", f"/jobs/{job}/resume", job, json={})
    clone = write("POST", "/jobs/{job_id}/clone", f"/jobs/{job}/clone", "", json={}).json()["id"]
    done[("POST", "/jobs/{job_id}/clone")] = (f"/jobs/{job}/clone", f"/jobs/{clone}")
    assert c.post(f"/jobs/{job}/cancel", headers=a).status_code == 200
    write("DELETE", "/jobs/{job_id}", f"/jobs/{job}", job)

    search = world.a["search_id"]
    write("POST", "/searches/{search_id}/cancel", f"/searches/{search}/cancel", search)
    # POST /searches and POST /datasets, /weights were written by the world's set-up
    done[("POST", "/searches")] = ("/searches", f"/searches/{search}")
    done[("POST", "/datasets")] = ("/datasets", f"/datasets/{world.a['dataset_id']}")
    done[("POST", "/weights")] = ("/weights", f"/weights/{world.a['weights_id']}")

    alias = "/models/{name}/aliases/{alias}"
    write("PUT", alias, "/models/a-model/aliases/staging", "a-model/staging", json={"version": 1})
    write("DELETE", alias, "/models/a-model/aliases/staging", "a-model/staging")
    version = "/models/{name}/versions/{version}"
    write("DELETE", version, "/models/digits-mlp/versions/1", "digits-mlp/1")
    weights, data = world.a["weights_id"], world.a["dataset_id"]
    write("DELETE", "/weights/{weights_id}", f"/weights/{weights}", weights)
    write("DELETE", "/datasets/{dataset_id}", f"/datasets/{data}", data)

    made = write("POST", "/keys", "/keys", "", json={"tenant": "team-c", "scopes": ["predict"]})
    made_id = made.json()["id"]
    done[("POST", "/keys")] = ("/keys", f"/keys/{made_id}")
    write("DELETE", "/keys/{key_id}", f"/keys/{made_id}", made_id)

    audited = {op for op, is_audited in write_routes(world).items() if is_audited}
    assert audited == set(done), f"audited write routes not exercised: {audited - set(done)}"

    callers = {
        name: world.client.get("/session", headers=headers).json()
        for name, headers in (("team-a", a), ("admin", admin))
    }
    assert callers["team-a"]["key_id"] == key_ids(world)["team-a all"]
    rows = audit_rows(world)
    for (method, template), (path, target) in done.items():
        action = f"{method} {template}"
        mine = [e for e in rows if e["action"] == action and e["route"] == path]
        assert mine, (action, path, [e["action"] for e in rows])
        event = mine[0]
        caller = callers["admin" if template.startswith("/keys") else "team-a"]
        assert (event["tenant"], event["key_id"]) == (caller["tenant"], caller["key_id"]), (
            action,
            event,
        )
        assert event["target"] == target, (action, event)
        assert event["created_at"], (action, event)


def test_a_write_refused_as_another_tenants_leaves_no_row(world: World) -> None:
    b = world.key("team-b")
    before = len(audit_rows(world, tenant="team-b"))
    for method, path in (
        ("POST", f"/searches/{world.a['search_id']}/cancel"),
        ("POST", f"/jobs/{world.a['job_id']}/cancel"),
        ("DELETE", f"/datasets/{world.a['dataset_id']}"),
        ("DELETE", "/models/a-model/aliases/production"),
    ):
        assert world.client.request(method, path, headers=b).status_code == 404, path
    assert len(audit_rows(world, tenant="team-b")) == before


def test_searches_list_only_the_callers_own(world: World) -> None:
    a, b = world.key("team-a"), world.key("team-b")
    search = world.a["search_id"]
    assert search in {s["id"] for s in world.client.get("/searches", headers=a).json()["items"]}
    assert search not in world.client.get("/searches", headers=b).text
    # trials are listed through GET /jobs?search_id=: another tenant's search lists nothing
    r = world.client.get("/jobs", params={"search_id": search}, headers=b)
    assert r.status_code == 200 and r.json()["items"] == [], r.text


def _refs(world: World) -> list[tuple[str, Any, Any]]:
    job, data, weights = world.a["job_id"], world.a["dataset_id"], world.a["weights_id"]
    return [
        ("dataset", {"name": None, "id": data}, {"name": None, "id": MISSING["dataset_id"]}),
        ("init_from", job, MISSING["job_id"]),
        ("init_from", "a-model", "no-such-model"),
        ("init_from", "a-model:1", "no-such-model:1"),
        ("init_from", "a-model@production", "no-such-model@production"),
        ("init_from", f"weights:{weights}", f"weights:{MISSING['weights_id']}"),
    ]


def _as_nowhere(world: World, text: str) -> str:
    text = text.replace(world.a["job_id"], MISSING["job_id"])
    text = text.replace(world.a["dataset_id"], MISSING["dataset_id"])
    text = text.replace(world.a["weights_id"], MISSING["weights_id"])
    return text.replace("a-model", "no-such-model")


def _part(what: str, ref: Any) -> dict[str, Any]:
    return {"dataset": ref} if what == "dataset" else {"model": {"init_from": ref}}


def test_a_search_cannot_reach_another_tenants_data_or_weights(world: World) -> None:
    a, b = world.key("team-a"), world.key("team-b")

    def search(what: str, ref: Any) -> dict[str, Any]:
        spec = iris_spec()
        for section, value in _part(what, ref).items():
            spec[section] = {**spec.get(section, {}), **value}
        return {
            "name": "reach",
            "spec": spec,
            "space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.1}},
            "objective": {"metric": "val_accuracy"},
            "max_trials": 2,
        }

    for what, theirs, nowhere in _refs(world):
        refused = world.client.post("/searches", json=search(what, theirs), headers=b)
        missing = world.client.post("/searches", json=search(what, nowhere), headers=b)
        assert refused.status_code in (404, 422), (what, theirs, refused.text)
        assert (refused.status_code, _as_nowhere(world, refused.text)) == (
            missing.status_code,
            missing.text,
        ), (what, theirs)
        accepted = world.client.post("/searches", json=search(what, theirs), headers=a)
        assert accepted.status_code == 201, (what, theirs, accepted.text)


def test_a_clone_cannot_reach_another_tenants_data_or_weights(world: World) -> None:
    a, b = world.key("team-a"), world.key("team-b")
    own = {}
    for tenant, headers in (("team-a", a), ("team-b", b)):
        r = world.client.post("/jobs", json=iris_spec(name="to-clone"), headers=headers)
        assert r.status_code == 201, r.text
        own[tenant] = r.json()["id"]
    for what, theirs, nowhere in _refs(world):
        clone = f"/jobs/{own['team-b']}/clone"
        refused = world.client.post(clone, json=_part(what, theirs), headers=b)
        missing = world.client.post(clone, json=_part(what, nowhere), headers=b)
        assert refused.status_code in (404, 422), (what, theirs, refused.text)
        assert (refused.status_code, _as_nowhere(world, refused.text)) == (
            missing.status_code,
            missing.text,
        ), (what, theirs)
        mine = world.client.post(
            f"/jobs/{own['team-a']}/clone", json=_part(what, theirs), headers=a
        )
        assert mine.status_code == 201, (what, theirs, mine.text)
