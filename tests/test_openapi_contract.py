"""/openapi.json as a contract: schemathesis generates requests from it (valid and invalid, with the
api-key header and with a bearer token in turn) against a running service and checks every answer
(status declared, body matches its schema, invalid data refused, valid data accepted, 401 without
a key, 405 with Allow, ...). Any failure of any kind fails the test.

Cases per operation: LOCALBATCH_CONTRACT_EXAMPLES (default 12, a few hundred in all); the README
gives the command for a longer run."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from conftest import API_KEY
from localbatch.launcher import start_service

EXAMPLES = int(os.environ.get("LOCALBATCH_CONTRACT_EXAMPLES", "12"))
CASES: Counter[str] = Counter()
_AUTH = itertools.cycle(({"api-key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}))

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def contract_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    handle = start_service(data_dir=tmp_path_factory.mktemp("contract"), api_key=API_KEY, engine="synthetic",
                           extra_args=["--file-processing-delay", "0", "--validating-seconds", "0.1"], wait=90)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def api_schema(contract_service: Any) -> Any:
    return schemathesis.openapi.from_url(f"{contract_service.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_every_answer_keeps_the_contract(case: Any) -> None:
    headers = next(_AUTH)
    CASES["api-key" if "api-key" in headers else "bearer"] += 1
    case.call_and_validate(headers=headers)


def test_the_document_declares_security_errors_and_answer_schemas(contract_service: Any) -> None:
    doc = httpx.get(f"{contract_service.base_url}/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyHeader", "Bearer"}
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()
                  if path.startswith(("/v1/", "/openai/"))]
    assert len(operations) >= 30
    for path, method, op in operations:
        assert op["security"] == [{"ApiKeyHeader": []}, {"Bearer": []}], (path, method)
        assert {"400", "401", "404"} <= set(op["responses"]), (path, method)
        ok = op["responses"]["200"]["content"]
        if "application/json" in ok:
            assert ok["application/json"]["schema"]["$ref"].startswith("#/components/schemas/"), (path, method)
        assert "422" not in op["responses"]
        version = [p for p in op.get("parameters", []) if p["name"] == "api-version"]
        if path.startswith("/openai/") and not path.startswith("/openai/v1/"):
            assert version and version[0]["required"] is True, (path, method)


def test_both_auth_headers_were_used_in_a_few_hundred_cases() -> None:
    if not CASES:
        pytest.skip("the generated cases did not run in this session")
    assert CASES["api-key"] > 0 and CASES["bearer"] > 0
    if EXAMPLES >= 12:
        assert sum(CASES.values()) >= 200, CASES
