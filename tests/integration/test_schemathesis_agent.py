"""Property-based API testing with schemathesis against the agent endpoint's own OpenAPI schema.

Every generated request (valid and invalid bodies, headers, queries and paths, on every
operation the schema documents: runs, chat completions, models, health, metrics, the dashboard
API) must get an answer that matches the documented schema (status code, content type, body)
and is never a server error: the endpoint answers no 5xx on purpose with in-process tools and a
scripted policy, so any 5xx is a bug. Three ways in:

* as a new user tries it, ``timely serve --policy scripted:oracle`` with no API key: a
  conversation gets 400 unsupported_by_policy, a registered task runs;
* with an API key and a policy that chats (tests/helpers/policies.CalculatorAgent), sending the
  key: conversations run their tool loop and answer;
* the same server without the key: 401 on every route but /health.

Runs are fast (scripted turns, tools without latency), so each generated run really plays.
Reproducible by default (``TIMELY_RANDOM_SEARCH=1`` searches afresh): tests/helpers/api_fuzz.py,
shared with tests/integration/test_schemathesis_api.py.
"""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from tests.helpers.api_fuzz import fuzz_config, fuzz_settings
from tests.helpers.policies import CalculatorAgent
from timely.serve.app import create_app
from timely.serve.config import ServeConfig

KEY = "agent-secret"
LIMITS = {"max_body_bytes": 4096, "max_budget_s": 30.0, "max_concurrent_runs": 4}
OPEN = create_app(ServeConfig(policy="scripted:oracle", **LIMITS))
agent = CalculatorAgent()
KEYED = create_app(ServeConfig(policy=agent.name, api_key=KEY, **LIMITS), policy=agent)
CONFIG = fuzz_config()  # no deliberate 5xx
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN, config=CONFIG)
keyed_schema = schemathesis.openapi.from_asgi(
    "/openapi.json", KEYED, config=CONFIG, headers={"Authorization": f"Bearer {KEY}"}
)

# Rules JSON Schema cannot state, so a schema-valid body may rightly get a 4xx: the last
# message must be a user turn, exactly one of task and messages, tools the tool server serves,
# task options the family knows, a model this server serves.
HAND_CHECKED = {"/v1/runs", "/v1/chat/completions"}


def excluded(case):
    return [positive_data_acceptance] if case.operation.path in HAND_CHECKED else []


@open_schema.parametrize()
@fuzz_settings(max_examples=25)
def test_scripted_endpoint_conforms_to_its_schema(case):
    case.call_and_validate(excluded_checks=excluded(case))


@keyed_schema.parametrize()
@fuzz_settings(max_examples=25)
def test_keyed_chatting_endpoint_conforms_to_its_schema(case):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=excluded(case)
    )


@keyed_schema.parametrize()
@fuzz_settings(max_examples=5)
def test_keyed_endpoint_without_the_key_answers_401(case):
    response = case.call(headers={"Authorization": ""})
    if case.operation.path == "/health":  # open: answered as with the key
        assert response.status_code != 401, response.text
    else:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "unauthorized"
        # The key is checked before the route: a stranger gets 401 for any method, not a 405
        # that would tell them which methods exist.
        case.validate_response(response, excluded_checks=[*excluded(case), unsupported_method])
