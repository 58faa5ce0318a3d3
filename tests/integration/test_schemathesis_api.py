"""Property-based API testing with schemathesis against the server's own OpenAPI schema.

Every generated request (valid and invalid bodies, headers and paths, on every operation the
schema documents, admin included) must get an answer that matches the documented schema
(status code, content type, headers, body) and is never an undocumented server error. The only
5xx the server answers on purpose are checked to be exactly that: an injected-fault 503 that
says so, and the 504 at a caller's deadline.

Reproducible by default (``TIMELY_RANDOM_SEARCH=1`` searches afresh): tests/helpers/api_fuzz.py,
shared with tests/integration/test_schemathesis_agent.py.
"""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers.api_fuzz import fuzz_config, fuzz_settings
from timely_server.app import ServerConfig, create_app

ADMIN = "admin-secret"
APP = create_app(
    ServerConfig(
        latency="uniform:0,3",
        faults="error=0.05,hang=0.05,slow=0.05",
        admin_token=ADMIN,  # admin operations are exercised too (no api key: the rest is open)
        max_body_bytes=4096,
        hang_timeout_s=5,
    )
)
# 503 (injected fault) and 504 (deadline) are by design; deliberate_5xx checks them.
CONFIG = fuzz_config("503", "504")
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)
# Virtual clock: latencies (whatever an admin PUT sets them to) are reported, never waited.
HEADERS = {"X-Timely-Clock": "virtual", "Authorization": f"Bearer {ADMIN}"}


@schemathesis.check
def deliberate_5xx(ctx, response, case):
    """A 5xx must be one of the two the server answers on purpose, and say so."""
    if response.status_code < 500:
        return None
    body = response.json()
    if response.status_code == 503:
        assert body.get("fault") == "http_5xx", response.text  # an injected fault
    else:
        assert response.status_code == 504, response.text
        assert body["error"]["type"] == "deadline_exceeded", response.text
    return None


@schema.parametrize()
@fuzz_settings(max_examples=100)
def test_api_conforms_to_its_schema(case):
    excluded = []
    if case.operation.path.startswith("/admin/") and case.method == "PUT":
        # Latency specs and fault rates have rules JSON Schema cannot state (uniform lo <= hi,
        # rates summing to at most 1), so a schema-valid update may rightly answer 422.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(
        headers=HEADERS, additional_checks=[deliberate_5xx], excluded_checks=excluded
    )
