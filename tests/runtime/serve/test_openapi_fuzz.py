"""schemathesis against a live `coreason serve`: every generated request, valid or not, gets
an answer its OpenAPI document describes, and never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests._fixtures.fuzz import examples
from tests._fixtures.serve import ServeProcess, start_serve, tiny_model_folder

pytestmark = pytest.mark.serve

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A tiny model with short answers, so each generated request costs milliseconds."""
    workdir = tmp_path_factory.mktemp("serve-fuzz")
    server = start_serve(
        str(tiny_model_folder()), workdir, extra_args=["--max-tokens", "8", "--timeout", "60"]
    )
    yield server
    server.stop()


def test_every_answer_is_described_by_the_openapi_document(small_server: ServeProcess) -> None:
    api = schemathesis.openapi.from_url(f"{small_server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {small_server.token}"}
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} == {"/health", "/v1/models", "/v1/chat/completions"}
    for operation in operations:

        @settings(max_examples=examples(15))
        @given(case=operation.as_strategy())
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)

        answers_as_documented()
