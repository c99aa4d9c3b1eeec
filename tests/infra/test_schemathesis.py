"""Schemathesis against the app in process (its ASGI interface, no socket, no broker): requests
generated from the app's own OpenAPI document, each answer checked against that document: no 500,
and no status code, content type or body the document does not describe.

The app has an API key, as a shared deployment does, and three runs go to it:
- with a key (every scope) of the tenant `default`, whose files keep the layout of a server with
  no key: every operation, `MAX_EXAMPLES` generated cases each;
- stateful, each scenario with a key (every scope) of a new tenant, whose files live under its
  own prefix: sequences of calls that follow the links schemathesis infers between operations
  (a job submitted, then read, patched, cancelled, cloned...);
- without a key: every operation, `ANONYMOUS_EXAMPLES` cases each (all but the public routes
  answer 401, which must be documented like any other answer).

Bounded by the example counts and derandomized, so a CI run is the same run every time (about a
minute on 2 cores); `-m schemathesis` selects these tests alone. Lines printed after the module
give each run's size: operations, requests (schemathesis adds its own boundary cases to the
generated ones), their answers by status class, and the seconds the app took.

The document is read once at import from an app that is never started (its directories in a
temporary folder, removed at once), so pytest gets one test per operation; the requests go to the
module's app, whose database and files live under the test's temp dir.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings

pytestmark = pytest.mark.schemathesis

#: Generated cases per operation with the key, and without one (where nearly all are a 401);
#: schemathesis adds its boundary cases to these. The module takes about 80 s on 2 cores.
MAX_EXAMPLES = 20
ANONYMOUS_EXAMPLES = 5
#: Stateful: scenarios, and calls in each.
STATEFUL_EXAMPLES = 30
STATEFUL_STEPS = 8
#: Runs of the state machine at most to reach `STATEFUL_EXAMPLES` (see the stateful test).
STATEFUL_ATTEMPTS = 4

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

#: Requests sent and operations reached, by run; seconds spent, by run.
REQUESTS: Counter[str] = Counter()
OPERATIONS: dict[str, set[str]] = {}
SECONDS: Counter[str] = Counter()
SCENARIOS: Counter[str] = Counter()
#: Answers by status class ("2xx", "4xx"...), by run.
STATUSES: dict[str, Counter[str]] = {}


def _document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp)), reaper=False).openapi()


schema = schemathesis.openapi.from_dict(_document())


@dataclass(frozen=True)
class Key:
    id: str
    #: `Authorization: Bearer <key>`.
    headers: dict[str, str]


def create_key(settings: Settings, tenant: str) -> Key:
    """A key with every scope for `tenant`, made as `tas keys create` makes one."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            row, token = key_store.create_key(
                session,
                key_store.server_secret(settings),
                tenant=tenant,
                scopes=sorted(key_store.ALL_SCOPES),
                name="schemathesis",
            )
            return Key(row.id, {"Authorization": f"Bearer {token}"})
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    app: FastAPI
    #: The per-operation run's key, tenant `default`.
    key: Key


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One app for the module's runs: each request's rows stay for the next (an id seen in one
    answer is a real one in the next call). Its publisher is the real one, on the embedded
    (filesystem) broker under the temp dir, so /readyz has a broker to ask; no worker takes the
    jobs. A key exists before the first request, so the app requires one. Its lifespan, started
    by schemathesis's ASGI client on the first request, is ended here rather than at exit."""
    settings = migrated_settings(tmp_path_factory.mktemp("schemathesis"))
    key = create_key(settings, key_store.DEFAULT_TENANT)
    yield Deployment(settings, make_app(settings), key)
    schemathesis_asgi.shutdown_lifespans()


@pytest.fixture(scope="module", autouse=True)
def run_size(request: pytest.FixtureRequest) -> Iterator[None]:
    """The run's size, on the terminal after the module's tests (also with -q; output capture is
    suspended for it, as `capsys.disabled()` does)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for run, n in REQUESTS.items():
            scenarios = f" in {SCENARIOS[run]} scenarios" if run in SCENARIOS else ""
            answers = ", ".join(f"{k} {v}" for k, v in sorted(STATUSES[run].items()))
            reporter.write_line(
                f"schemathesis {run}: {len(OPERATIONS[run])} operations, {n} requests{scenarios}"
                f" ({answers}), {SECONDS[run]:.0f} s in the app"
            )


def _keep_own_key(case: schemathesis.Case, key: Key | None) -> None:
    """The key has `admin`, so a generated DELETE /keys/{key_id} may name the run's own key (its
    id is listed by GET /keys): the rest of the run would then be nothing but 401s. That one
    call goes to a key that does not exist instead (a 404, documented as well)."""
    if key is not None and case.method == "DELETE" and case.path_parameters.get("key_id") == key.id:
        case.path_parameters["key_id"] = "0" * 16


def _send(
    run: str, case: schemathesis.Case, app: FastAPI, key: Key | None
) -> schemathesis.Response:
    _keep_own_key(case, key)
    started = time.perf_counter()
    response = case.call(app=app, headers=key.headers if key is not None else {})
    SECONDS[run] += time.perf_counter() - started
    REQUESTS[run] += 1
    STATUSES.setdefault(run, Counter())[f"{response.status_code // 100}xx"] += 1
    OPERATIONS.setdefault(run, set()).add(case.operation.label)
    return response


@schema.parametrize()
@settings(HYPOTHESIS, max_examples=MAX_EXAMPLES)
def test_every_operation_with_a_key(case: schemathesis.Case, deployment: Deployment) -> None:
    response = _send("with a key", case, deployment.app, deployment.key)
    case.validate_response(response, checks=CHECKS, headers=deployment.key.headers)


@schema.parametrize()
@settings(HYPOTHESIS, max_examples=ANONYMOUS_EXAMPLES)
def test_every_operation_without_a_key(case: schemathesis.Case, deployment: Deployment) -> None:
    response = _send("without a key", case, deployment.app, None)
    case.validate_response(response, checks=CHECKS)


def test_sequences_of_calls_with_a_key(deployment: Deployment) -> None:
    """Calls chained by the links schemathesis infers (a created job's id fed to its routes).

    Each scenario is a new tenant with its own key: it starts with no jobs, datasets or models of
    its own, whatever the scenarios before it left.

    Schemathesis adapts its generation to the answers it has seen, so Hypothesis may find a
    replayed prefix drawing otherwise and stop the run as "flaky" (or with an assertion of its
    data tree). Schemathesis's own runner then counts the run so far as passed and starts
    another with the root operations in another order; so does this test, until
    `STATEFUL_EXAMPLES` scenarios have run. A failed check is never lost that way: it is
    recorded when seen and reported as it was first seen."""
    failures: list[Exception] = []
    scenarios = itertools.count(1)
    started = 0

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            nonlocal started
            started = next(scenarios)
            self.key = create_key(deployment.settings, f"scenario-{started}")

        def call(self, case: schemathesis.Case, **kwargs: Any) -> schemathesis.Response:
            return _send("stateful, with a key", case, deployment.app, self.key)

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: list[CheckFunction] | None = None,
            **kwargs: Any,
        ) -> None:
            try:
                case.validate_response(
                    response,
                    checks=CHECKS,
                    headers=self.key.headers,
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )
            except Exception as exc:
                failures.append(exc)
                raise

    for attempt in range(STATEFUL_ATTEMPTS):
        Machine.rule_order_seed = attempt
        try:
            Machine.run(
                settings=settings(
                    HYPOTHESIS,
                    max_examples=STATEFUL_EXAMPLES - started,
                    stateful_step_count=STATEFUL_STEPS,
                )
            )
        except (Flaky, AssertionError) as exc:
            if failures:
                raise failures[0] from None
            if not isinstance(exc, Flaky) and not is_inconsistent_replay(exc):
                raise
        if started >= STATEFUL_EXAMPLES:
            break
    SCENARIOS["stateful, with a key"] = started
    assert started >= STATEFUL_EXAMPLES // 2, f"only {started} scenarios ran"
