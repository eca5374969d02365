"""Schemathesis fuzzes every operation of the running service's own /openapi.json with an admin token: valid and
invalid paths, queries and bodies (UIDs, filters, review and user payloads) may be refused, but never with a 5xx.

Bounded for CI: a few generated cases per operation, derandomized, no example database."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis

from tests.integration.api.conftest import api  # noqa: F401  (the running API fixture)
from tests.support.dashboard_study import seed_failed_run, seed_reviewable_study

EXAMPLES_PER_OPERATION = 10


@pytest.mark.slow
def test_no_operation_of_the_openapi_schema_answers_a_server_error(api, session_factory):  # noqa: F811
    base, tokens, _, app = api
    study_uid = seed_reviewable_study(session_factory, app.state.settings)  # rows for the queries to walk
    seed_failed_run(session_factory, app.state.settings)
    auth = {"Authorization": f"Bearer {tokens['admin']}"}
    schema = schemathesis.openapi.from_url(base + "/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    # revoking tokens last: a generated name could be the admin's own, which would turn the rest into 401s
    operations.sort(key=lambda op: op.path.endswith("/revoke-tokens"))
    assert len(operations) >= 10, [op.label for op in operations]
    from hypothesis import strategies
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    exercised = []
    for operation in operations:
        # valid cases, invalid ones (wrong types, patterns, bodies), and valid ones aimed at a study that exists
        cases = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
        if "{study_uid}" in operation.path:
            cases.append(operation.as_strategy(path_parameters={"study_uid": study_uid}))

        @hypothesis.given(case=strategies.one_of(cases))
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def no_server_error(case):
            response = case.call_and_validate(base_url=base, headers=auth, checks=[not_a_server_error], timeout=30)
            exercised.append((operation.label, response.status_code))

        no_server_error()
    assert {label for label, _ in exercised} == {op.label for op in operations}
    statuses = {status for _, status in exercised}
    assert any(200 <= s < 300 for s in statuses) and 422 in statuses  # accepted and refused cases both reached it
