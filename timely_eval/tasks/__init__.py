"""Built-in task families; importing this module registers them."""

from timely_eval.tasks import (
    games,  # noqa: F401 - registers the games family
    math,  # noqa: F401 - registers the math family
    ml,  # noqa: F401 - registers the ML-engineering family
)
