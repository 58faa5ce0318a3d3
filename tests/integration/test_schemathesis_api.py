"""Property-based API testing with schemathesis against the server's own OpenAPI schema.

Every generated request (valid and invalid bodies, headers and paths, on every operation the
schema documents, admin included) must get an answer that matches the documented schema
(status code, content type, headers, body) and is never an undocumented server error. The only
5xx the server answers on purpose are checked to be exactly that: an injected-fault 503 that
says so, and the 504 at a caller's deadline.

Reproducible by default: the search is derandomized (Hypothesis derives its seed from the test,
no example database), so `make test`, CI and a local run send the same requests and a failure
seen once is seen again. ``TIMELY_RANDOM_SEARCH=1`` opts into a fresh random search (Hypothesis
prints the seed of a failure: rerun it with ``--hypothesis-seed=<seed>``).
"""

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.specs.openapi.checks import positive_data_acceptance

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
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # 503 (injected fault) and 504 (deadline) are by design; _deliberate_5xx checks them.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503", "504"]},
            # A schema-violating body can also be too long: 413 body_too_large rejects it too
            # (a generated body over max_body_bytes was once counted as "accepted").
            "negative_data_rejection": {
                "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
            },
        },
    }
)
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


RANDOM_SEARCH = os.environ.get("TIMELY_RANDOM_SEARCH") == "1"
REPRODUCIBLE = {} if RANDOM_SEARCH else {"derandomize": True, "database": None}


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), **REPRODUCIBLE)
def test_api_conforms_to_its_schema(case):
    excluded = []
    if case.operation.path.startswith("/admin/") and case.method == "PUT":
        # Latency specs and fault rates have rules JSON Schema cannot state (uniform lo <= hi,
        # rates summing to at most 1), so a schema-valid update may rightly answer 422.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(
        headers=HEADERS, additional_checks=[deliberate_5xx], excluded_checks=excluded
    )
