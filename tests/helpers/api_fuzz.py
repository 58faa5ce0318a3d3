"""Shared set-up of the schemathesis tests (tool server and agent endpoint): one config, one
reproducibility rule, so both fuzz their OpenAPI schemas the same way.

Reproducible by default: the search is derandomized (Hypothesis derives its seed from the test,
no example database), so `make test`, CI and a local run send the same requests and a failure
seen once is seen again. ``TIMELY_RANDOM_SEARCH=1`` opts into a fresh random search (Hypothesis
prints the seed of a failure: rerun it with ``--hypothesis-seed=<seed>``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

RANDOM_SEARCH = os.environ.get("TIMELY_RANDOM_SEARCH") == "1"
REPRODUCIBLE: dict[str, Any] = {} if RANDOM_SEARCH else {"derandomize": True, "database": None}


def fuzz_config(*deliberate_5xx: str) -> schemathesis.Config:
    """Checks for a server whose only 5xx are ``deliberate_5xx`` (e.g. "503", "504").

    A schema-violating body can also be too long: 413 body_too_large rejects it too (a
    generated body over max_body_bytes was once counted as "accepted").
    """
    return schemathesis.Config.from_dict(
        {
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", *deliberate_5xx]},
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
                },
            },
        }
    )


def fuzz_settings(max_examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings of a schemathesis test: ``max_examples`` per operation, no
    per-example deadline, no health checks, reproducible unless TIMELY_RANDOM_SEARCH=1."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        **REPRODUCIBLE,
    )
