"""Schemathesis against the app in process (its ASGI interface, no socket, no broker): requests
generated from the app's own OpenAPI document, each answer checked against that document.

Two runs over one app: per operation (every route, `MAX_EXAMPLES` generated requests each) and
stateful (sequences of calls that follow the links schemathesis infers between operations: a job
submitted, then read, patched, cancelled...). Both must see no 500 and no answer the document does
not describe (status code, content type, body schema). Bounded by the example counts and
derandomized, so a CI run is the same run every time; `-m schemathesis` selects them alone.

The document is read once at import from an app that is never started (its directories in a
temporary folder, removed at once), so pytest gets one test per operation; the requests go to the
module's app, whose database and files live under the test's temp dir.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tas.settings import Settings
from tests.helpers.api import make_app, migrated_settings

pytestmark = pytest.mark.schemathesis

#: Generated requests per operation; with ~30 operations the run stays near a minute on 2 cores.
MAX_EXAMPLES = 25
#: Stateful: scenarios, and calls in each.
STATEFUL_EXAMPLES = 30
STATEFUL_STEPS = 8

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


def _document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp)), reaper=False).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """One app for the module's runs: each request's rows stay for the next (an id seen in one
    answer is a real one in the next call). Its publisher is the real one, on the embedded
    (filesystem) broker under the temp dir, so /readyz has a broker to ask; no worker takes the
    jobs. Its lifespan, started by schemathesis's ASGI client on the first request, is ended here
    rather than at interpreter exit."""
    app = make_app(migrated_settings(tmp_path_factory.mktemp("schemathesis")))
    yield app
    schemathesis_asgi.shutdown_lifespans()


@schema.parametrize()
@settings(HYPOTHESIS, max_examples=MAX_EXAMPLES)
def test_every_operation_answers_as_documented(case: schemathesis.Case, api_app: FastAPI) -> None:
    case.call_and_validate(app=api_app, checks=CHECKS)


def test_sequences_of_calls_answer_as_documented(api_app: FastAPI) -> None:
    """Calls chained by the links schemathesis infers (a created job's id fed to its routes)."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def call(self, case: schemathesis.Case, **kwargs: Any) -> schemathesis.Response:
            return case.call(app=api_app, **kwargs)

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: list[CheckFunction] | None = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
            )

    Machine.run(
        settings=settings(
            HYPOTHESIS, max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS
        )
    )
