"""Schemathesis against the app's own OpenAPI document: every operation, valid and invalid
input, with a key (the worker token on the worker routes). No answer may be a 5xx, and every
answer must be one the document describes: its status, content type, headers and schema.

First schemathesis' boundary values (a fixed list), then random examples drawn by Hypothesis
with a fixed seed (`derandomize`), a fixed number per operation: a run is repeatable and takes
well under a minute on two cores.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import auths
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import ASGIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.workers.document import worker_document
from tests.figures import figure
from tests.security.deployment import WORKER_TOKEN, Deployment, bearer

BASE_URL = "http://testserver"
EXAMPLES_PER_OPERATION = 15
BOUNDARY_CASES_PER_OPERATION = 150

CONFORMANCE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Whether auth is enforced is left to test_security, which sends every operation seven kinds
# of bad credentials; schemathesis' own probe for it would go out over the network.
CHECKS_BY_MODE = {
    GenerationMode.POSITIVE: CONFORMANCE_CHECKS,
    GenerationMode.NEGATIVE: [*CONFORMANCE_CHECKS, negative_data_rejection],
}


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def record(self, label: str, status: int | None, failure: str | None) -> None:
        self.cases += 1
        if status is not None:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if failure is not None:
            # One example of each distinct failure is enough to reproduce it.
            self.failures.setdefault(f"{label}: {failure.splitlines()[0]}", failure)


def fuzz(strategy: SearchStrategy[Any], run_case: Callable[[Any], None], examples: int) -> None:
    @hypothesis_settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        # Failures are collected rather than raised, so there is nothing to shrink.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        run_case(case)

    run()


@dataclass
class Pass:
    """One round of examples for an operation: which input, and what is fixed in it."""

    mode: GenerationMode
    path_parameters: dict[str, str] | None = None
    # Body fields set on every example: a worker's real attempt and lease.
    body_fields: dict[str, Any] | None = None


def passes_for(path: str, deployment: Deployment, seeded: dict[str, str]) -> list[Pass]:
    passes = [Pass(GenerationMode.POSITIVE), Pass(GenerationMode.NEGATIVE)]
    if "{study_id}" in path:
        # The tenant's own study, cancelled so that its event stream ends at once.
        passes.append(Pass(GenerationMode.POSITIVE, {"study_id": seeded["study_id"]}))
    if "{job_id}" not in path:
        return passes
    if path.startswith("/v1/"):
        # Random ids only ever find nothing; the tenant's own job exercises the rest.
        known = {name: seeded[name] for name in ("job_id", "name") if f"{{{name}}}" in path}
        passes.append(Pass(GenerationMode.POSITIVE, known))
    else:
        # A random attempt is only ever stale; a job claimed for this pass, with its real
        # lease in every body, reaches the ledger.
        job = deployment.submit(bearer(seeded["tenant_key"]))
        attempt = deployment.worker.attempt(job["id"])
        passes.append(Pass(GenerationMode.POSITIVE, {"job_id": job["id"]}, attempt))
    return passes


@dataclass
class Sender:
    """Sends a case to the app in process and checks the answer."""

    client: ASGIClient
    report: FuzzReport

    def __call__(self, case: Any, body_fields: dict[str, Any] | None = None) -> None:
        mode = case.meta.generation.mode
        label = f"{case.operation.label} [{mode.value}]"
        if body_fields and isinstance(case.body, dict):
            # Only fields the body has: a claim carries no attempt yet.
            case.body.update({k: v for k, v in body_fields.items() if k in case.body})
        try:
            response = case.call(base_url=BASE_URL, session=self.client)
        except Exception as error:  # noqa: BLE001 - an app crash is a finding, not a stop
            self.report.record(label, None, f"{type(error).__name__}: {error}")
            return
        try:
            case.validate_response(response, checks=CHECKS_BY_MODE[mode])
        except FailureGroup as failures:
            self.report.record(label, response.status_code, str(failures))
            return
        self.report.record(label, response.status_code, None)


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_schema(make_deployment):
    # Limits high enough that the fuzzer explores the routes rather than the limits, which
    # tests of their own cover.
    deployment = make_deployment(
        requests_per_minute=1_000_000,
        failed_auth_per_minute=1_000_000,
        max_concurrent_jobs=1_000_000,
    )
    tenant_key = deployment.new_key("acme")
    job, checkpoint = deployment.trained_job(bearer(tenant_key))
    study = deployment.client.post(
        "/v1/studies",
        json={"space": {"batch_size": {"type": "categorical", "choices": [32, 64]}}},
        headers=bearer(tenant_key),
    ).json()
    deployment.client.post(f"/v1/studies/{study['id']}/cancel", headers=bearer(tenant_key))
    seeded = {
        "job_id": job["id"],
        "name": checkpoint,
        "tenant_key": tenant_key,
        "study_id": study["id"],
    }
    # The public document, and the worker routes' own (they are not in the public one).
    documents = [deployment.client.get("/openapi.json").json(), worker_document()]
    # Credentials through schemathesis' own auth settings, so it knows which requests carry a
    # valid key: it still sends some with the key left out or mangled, and expects a 401.
    auth = {"HTTPBearer": {"bearer": tenant_key}, "WorkerToken": {"bearer": WORKER_TOKEN}}
    config = SchemathesisConfig.from_dict({"auth": {"openapi": auth}})
    report = FuzzReport()
    # Requests reach the app in process; the client is never entered, so no lifespan starts.
    send = Sender(ASGIClient(deployment.app), report)
    no_invalid_input: list[str] = []
    operations = [
        (schema, result.ok())
        for schema in (schemathesis.openapi.from_dict(doc, config=config) for doc in documents)
        for result in schema.get_all_operations()
    ]
    assert len(operations) == sum(
        len(methods) for document in documents for methods in document["paths"].values()
    )

    for schema, operation in operations:
        # Schemathesis' coverage phase: each parameter and field at and just past its bounds,
        # of the wrong type, missing; a fixed list, the same on every run.
        boundary_cases = list(
            schema.iter_coverage_cases(
                operation,
                generation_modes=list(GenerationMode),
                generation_config=schema.config.generation_for(
                    operation=operation, phase="coverage"
                ),
            )
        )
        # A job spec alone has over a thousand; an even spread of them keeps the run short.
        stride = math.ceil(len(boundary_cases) / BOUNDARY_CASES_PER_OPERATION)
        for case in boundary_cases[::stride]:
            auths.set_on_generated_case(
                case, auths.AuthContext(operation=operation, app=None), None
            )
            send(case)
        # Then random examples, valid and invalid.
        for round_ in passes_for(operation.path, deployment, seeded):
            strategy = operation.as_strategy(
                generation_mode=round_.mode, path_parameters=round_.path_parameters
            )
            try:
                fuzz(
                    strategy,
                    lambda case, round_=round_: send(case, round_.body_fields),
                    EXAMPLES_PER_OPERATION,
                )
            except Unsatisfiable:
                # An operation without parameters or a body has no invalid input to send.
                assert round_.mode is GenerationMode.NEGATIVE, operation.label
                no_invalid_input.append(operation.label)

    server_errors = sum(count for status, count in report.statuses.items() if status >= 500)
    figure(
        f"[security] schemathesis: {len(operations)} operations, {report.cases} cases "
        f"(boundary values, then random valid and invalid input, random and real ids), "
        f"statuses {dict(sorted(report.statuses.items()))} / "
        f"{len(report.failures)} failures, {server_errors} 5xx"
    )
    for failure in report.failures.values():
        print(failure)
    assert report.failures == {}
    assert server_errors == 0
