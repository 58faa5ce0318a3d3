"""Wall-clock bounds for tests that run real waits.

A lower bound proves a wait really happened. An upper bound only has to tell "cut at the
deadline" (or "not slept") from the alternative, which every test using this keeps seconds
away; so it gets slack for a loaded runner: a 2-core CI machine under the full suite has
stalled a 0.2 s loopback call to 0.72 s. How accurate the waits are is measured in bench/,
not asserted here.
"""

WALL_SLACK_S = 1.0
