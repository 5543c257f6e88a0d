"""/openapi.json as a contract: schemathesis generates requests from it (valid and invalid ones)
against a running service and runs every check it has (status declared, body matches its schema,
invalid data refused, valid data accepted, 401 for bad credentials, 405 with Allow, ...), once with
the api-key header and once with a bearer token. Any failure of any kind fails the test.

Examples per operation: LOCALBATCH_CONTRACT_EXAMPLES (default 5: about 1,700 cases per header with
the coverage phase); the README gives the command for a longer run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import API_KEY
from localbatch.launcher import start_service

EXAMPLES = int(os.environ.get("LOCALBATCH_CONTRACT_EXAMPLES", "5"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def contract_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    handle = start_service(data_dir=tmp_path_factory.mktemp("contract"), api_key=API_KEY, engine="synthetic",
                           extra_args=["--file-processing-delay", "0", "--validating-seconds", "0.1"], wait=90)
    yield handle
    handle.stop()


@pytest.mark.parametrize("header", [f"api-key: {API_KEY}", f"Authorization: Bearer {API_KEY}"],
                         ids=["api-key", "bearer"])
def test_schemathesis_finds_no_failure_of_any_kind(contract_service: Any, header: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{contract_service.base_url}/openapi.json", "-H", header,
         "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "20261201", "--workers", "1",
         "--suppress-health-check", "all", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    tail = done.stdout[-6000:]
    assert done.returncode == 0, tail + done.stderr[-2000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted, tail
    generated, passed = int(counted[1]), int(counted[2])
    print(f"schemathesis ({header.split(':')[0]}): {generated} cases generated, {passed} passed")
    assert generated == passed and generated >= 300, tail


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
