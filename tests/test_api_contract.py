"""The OpenAPI description matches the routes, and fuzzing every operation finds no 5xx and no off-schema answer."""

from __future__ import annotations

import re

import pytest
import schemathesis
import yaml
from conftest import ROOT, copy_model, serving
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app

SCHEMA = schemathesis.openapi.from_path(str(ROOT / "openapi.yaml"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
UNDOCUMENTED = {"/", "/status", "/static/<path:filename>", "/favicon.ico"}  # the pages and their files: not JSON API


@pytest.fixture(scope="module")
def api(fixture_model, tmp_path_factory):
    with serving(copy_model(fixture_model, tmp_path_factory.mktemp("api") / "m")) as server:
        yield server


def test_every_route_is_described_and_every_description_is_a_route(api):
    app = create_app(api.recommender)
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())["paths"]
    described = {path: {m for m in ops if m in {"get", "post", "put", "delete", "patch"}} for path, ops in spec.items()}
    assert routes == described


def test_served_description_is_the_file(api):
    status, body, _ = api.get("/openapi.json")
    assert status == 200 and body == yaml.safe_load((ROOT / "openapi.yaml").read_text())


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_every_operation(case, api):
    response = case.call(base_url=f"http://127.0.0.1:{api.port}")
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        content_type = {k.lower(): v for k, v in response.headers.items()}["content-type"]
        assert "application/json" in str(content_type)
        body = response.json()
        assert set(body) == {"error"} and body["error"]
