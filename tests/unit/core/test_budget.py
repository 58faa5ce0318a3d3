import pytest
from pydantic import ValidationError

from timely.budget import (
    TIME_AWARENESS_PRESETS,
    Budget,
    TimeAwareness,
    TimeStatus,
    expected_step_s,
    read_status,
)


def test_budget_stop_and_on_time():
    hard = Budget(seconds=10)
    assert hard.stop_at == 10
    late = Budget(seconds=10, overrun="late", late_limit_factor=3)
    assert late.stop_at == 30
    slack = Budget(seconds=10, on_time_slack=1.1)
    assert slack.on_time(10.9) and not slack.on_time(11.1)
    with pytest.raises(ValidationError):
        Budget(seconds=0)


def test_status_lines():
    status = TimeStatus(budget=60, elapsed=12.34)
    assert status.remaining == pytest.approx(47.66)
    assert TimeAwareness().status_line(status) == "[time] 12.3s used of 60s, 47.7s left"
    paper = TIME_AWARENESS_PRESETS["paper"]
    assert paper.status_line(status) == "You have spent 12.3 seconds."
    assert paper.budget_line(30) == "Please answer within 30 seconds."


def test_status_lines_state_the_steps_that_fit_before_the_answer_once_a_step_was_timed():
    status = TimeStatus(budget=60, elapsed=12.34, step_s=6.17)
    assert status.steps_left == 6  # 7 steps fit in the 47.7 s left; the answer takes one
    line = TimeAwareness().status_line(status)
    assert line == "[time] 12.3s used of 60s, 47.7s left, room for ~6 steps of 6.2s and the answer"
    assert read_status(f"= 42\n{line}") == TimeStatus(budget=60, elapsed=12.3, step_s=6.2)
    one = TimeStatus(budget=30, elapsed=14.0, step_s=5.0)
    assert TimeAwareness().status_line(one).endswith(", room for ~2 steps of 5.0s and the answer")
    # "~0" begins where less than two steps are left (with the shown numbers' resolution): the
    # budget-aware expert's stop at safety 2.
    assert TimeStatus(budget=20, elapsed=9.85, step_s=5.0).steps_left == 1
    assert TimeStatus(budget=20, elapsed=9.95, step_s=5.0).steps_left == 0
    over = TimeStatus(budget=20, elapsed=21.0, step_s=5.0)
    assert over.steps_left == 0 and TimeAwareness().status_line(over).endswith(
        "room for ~0 steps of 5.0s and the answer"
    )
    # Runs recorded before the answer was held back still read.
    old = "[time] 12.3s used of 60s, 47.7s left, ~7 steps of 6.2s"
    assert read_status(old) == TimeStatus(budget=60, elapsed=12.3, step_s=6.2)
    # The paper's wording states elapsed time only, as the reference release does.
    assert TIME_AWARENESS_PRESETS["paper"].status_line(status) == "You have spent 12.3 seconds."


def test_expected_step_cost_is_the_dearer_of_the_average_and_the_latest_steps():
    assert expected_step_s([(0, 0.0)]) is None
    assert expected_step_s([(0, 0.0), (2, 10.0)]) == pytest.approx(5.0)
    # The latest step cost 8 s against an average of 6 s: prompts grow, so it is the guess.
    assert expected_step_s([(0, 0.0), (2, 10.0), (3, 18.0)]) == pytest.approx(8.0)
    # A clock read between (no new step) does not count as a step.
    assert expected_step_s([(0, 0.0), (2, 10.0), (2, 11.0), (3, 13.0)]) == pytest.approx(13 / 3)


def test_modes_resolve_against_task_preference():
    auto = TimeAwareness(mode="auto")
    assert auto.pushes("push") and not auto.pulls("push")
    assert auto.pulls("pull") and not auto.pushes("pull")
    both = TimeAwareness(mode="both")
    assert both.pushes("pull") and both.pulls("push")
    none = TimeAwareness(mode="none")
    assert not none.pushes("push") and not none.pulls("pull")
