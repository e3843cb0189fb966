"""Schemathesis over the OpenAPI schema, through real HTTP: every operation, a bounded number of generated requests
each, zero server errors and zero responses that contradict the schema. (Driven by hand rather than with
schemathesis' pytest plugin, whose lazy fixture loading does not run under pytest 9.)"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 12


def test_every_operation_conforms_to_its_schema(live_server):
    url = live_server().url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # encode, decode, reconstruct, samples, model, healthz, readyz, metrics
    failures = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)

        try:
            check()
        except Exception as err:  # collect every operation's failure, not just the first
            failures[operation.label] = str(err)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())
