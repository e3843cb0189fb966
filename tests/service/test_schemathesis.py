"""Schemathesis over the OpenAPI schema, through real HTTP: every operation, a bounded number of generated requests
each, zero server errors and zero responses that contradict the schema."""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(live_server):
    server = live_server()
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case, live_server):
    case.call_and_validate(base_url=live_server().url, checks=CHECKS, timeout=30)
