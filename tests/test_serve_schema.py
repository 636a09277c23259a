"""Property-based requests from the server's own OpenAPI schema (schemathesis, in-process ASGI): no 5xx."""

from pathlib import Path

import pytest
import schemathesis
from helpers import compose_config
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from pneumonia_cam.serving.app import create_app


@pytest.fixture(scope="module")
def api_schema(smoke_checkpoint: Path) -> schemathesis.schemas.BaseSchema:
    """The schema of a server on the smoke checkpoint, once its lifespan has loaded and warmed the model."""
    cfg = compose_config("serve.yaml", [f"ckpt_path={smoke_checkpoint}", "extras.print_config=false"])
    GlobalHydra.instance().clear()
    app = create_app(cfg)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    assert app.state.server.ready.wait(60), app.state.server.load_error
    return schema


def test_generated_requests_never_get_a_server_error(api_schema):
    """Valid and invalid files and parameters for every operation: 2xx or a precise 4xx, never a 5xx."""
    operations = {
        f"{result.ok().method.upper()} {result.ok().path}" for result in api_schema.get_all_operations()
    }
    assert {"POST /v1/predict", "POST /v1/explain", "POST /v1/predict/batch", "GET /v1/model"} <= operations
    seen: set[str] = set()
    cases = st.one_of(
        api_schema.as_strategy(GenerationMode.POSITIVE), api_schema.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=cases)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error])
        assert response.status_code < 500, response.text
        seen.add(f"{case.method.upper()} {case.path}")

    check()
    assert "POST /v1/predict" in seen and "POST /v1/predict/batch" in seen
