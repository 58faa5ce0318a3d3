"""The run record (timely.runrecord): writing, reading, dedupe, resume, tailing, outcomes."""

from __future__ import annotations

import itertools
import json
import logging
import threading

import pytest

from timely.errors import ConfigError
from timely.runrecord import (
    CALIBRATION,
    OUTCOMES,
    RESULTS,
    TRAJECTORIES,
    EpisodeLog,
    Outcome,
    TailReader,
    append_trajectories,
    classify,
    done_keys,
    episode_key,
    iter_trajectories,
    outcome,
    parse_outcome,
    read_run,
    trajectories_file,
)
from timely.types import EndReason, Message, Trajectory


def _traj(
    *,
    seed: int = 0,
    key: str | None = None,
    end: EndReason = EndReason.ANSWERED,
    compliant: bool = True,
    score: float = 1.0,
    **meta: object,
) -> Trajectory:
    metadata = dict(meta)
    if key is not None:
        metadata["key"] = key
    return Trajectory(
        task_id="math/arithmetic-v1",
        seed=seed,
        policy="scripted:oracle",
        clock="virtual",
        budget_s=30.0,
        latency="constant:0.2",
        target="42",
        messages=[Message(role="user", content="q")],
        end_reason=end,
        compliant=compliant,
        score=score,
        metadata=metadata,
    )


def _line(traj: Trajectory) -> bytes:
    return traj.model_dump_json().encode() + b"\n"


# ---- outcomes --------------------------------------------------------------------------------

A = EndReason.ANSWERED
CLASSIFICATION = [  # end reason, compliant, score -> outcome
    (A, True, 1.0, "on_time"),
    (A, True, 0.5, "on_time"),  # partial credit in time is on time
    (A, True, 0.0, "wrong"),
    (A, False, 1.0, "late"),  # an overrun="late" budget keeps an answer past the budget
    (A, False, 0.0, "late"),
    (EndReason.BUDGET_EXHAUSTED, False, 0.0, "cut_off"),
    (EndReason.MAX_TURNS, False, 0.0, "no_answer"),
    (EndReason.POLICY_ERROR, False, 0.0, "failed"),
    (EndReason.TOOL_SERVER_ERROR, False, 0.0, "failed"),
    ("an_end_reason_from_the_future", True, 1.0, "failed"),  # never mistaken for success
]


@pytest.mark.parametrize(("end", "compliant", "score", "expected"), CLASSIFICATION)
def test_the_classification_table(end, compliant, score, expected):
    assert classify(str(end), compliant, score) == expected
    assert expected in OUTCOMES
    if isinstance(end, EndReason):
        assert outcome(_traj(end=end, compliant=compliant, score=score)) == expected


def test_an_answer_without_a_gold_is_on_time_whatever_its_score():
    """The agent endpoint's chat task has no target and scores 0 by definition: not wrong."""
    chat = _traj(score=0.0).model_copy(update={"target": None})
    assert outcome(chat) == "on_time" and classify("answered", True, 0.0, graded=False) == "on_time"
    assert outcome(chat.model_copy(update={"compliant": False})) == "late"
    old = chat.model_copy(update={"schema_version": 1})  # before records kept a target
    assert outcome(old) == "wrong"


def test_the_vocabulary_is_the_enum_in_display_order():
    assert list(OUTCOMES) == [o.value for o in Outcome]
    assert {row[-1] for row in CLASSIFICATION} == set(OUTCOMES)  # the table reaches every word


def test_typed_outcomes_accept_aliases_case_and_dashes():
    assert parse_outcome("ok") == "on_time" and parse_outcome("Cut-Off") == "cut_off"
    assert parse_outcome("error") == "failed" and parse_outcome("no-answer") == "no_answer"
    with pytest.raises(ConfigError, match="unknown outcome 'nope'.*cut_off"):
        parse_outcome("nope")


def test_the_dashboard_and_the_serving_metrics_classify_with_the_record():
    """The page (raw JSON) and the metrics (Trajectory) say the same word as `timely show`."""
    from timely.serve.dashboard.records import summarize
    from timely.serve.metrics import ServeMetrics

    metrics = ServeMetrics()
    grid = itertools.product(EndReason, (True, False), (0.0, 1.0), ("42", None))
    for end, compliant, score, target in grid:
        traj = _traj(end=end, compliant=compliant, score=score).model_copy(
            update={"target": target}
        )
        row = summarize(json.loads(traj.model_dump_json()), "x", "src")
        assert row["outcome"] == outcome(traj)
        metrics.finished("runs", traj, 1.0)
    text = metrics.render().decode()
    for word in OUTCOMES:
        assert f'outcome="{word}"' in text


# ---- reading ---------------------------------------------------------------------------------


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    file = tmp_path / TRAJECTORIES
    file.write_bytes(_line(_traj(seed=0)) + _line(_traj(seed=1)) + _line(_traj(seed=2))[:40])
    with caplog.at_level(logging.WARNING, logger="timely.runrecord"):
        assert [t.seed for t in read_run(tmp_path)] == [0, 1]
    assert "incomplete last line" in caplog.text and f"{TRAJECTORIES}:3" in caplog.text
    assert file.read_bytes().endswith(_line(_traj(seed=2))[:40])  # a reader never writes


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path):
    (tmp_path / TRAJECTORIES).write_bytes(_line(_traj(seed=0)) + _line(_traj(seed=1))[:-1])
    assert [t.seed for t in read_run(tmp_path)] == [0, 1]


def test_a_damaged_line_inside_the_file_is_an_error_naming_it(tmp_path):
    (tmp_path / TRAJECTORIES).write_bytes(_line(_traj()) + b"{oops\n" + _line(_traj(seed=1)))
    with pytest.raises(ConfigError, match=rf"{TRAJECTORIES}:2 is not a trajectory.*delete"):
        read_run(tmp_path)


def test_a_file_that_is_no_trajectories_file_says_what_to_pass(tmp_path):
    results = tmp_path / RESULTS
    results.write_text(json.dumps({"families": []}, indent=1))
    with pytest.raises(ConfigError, match="is not a trajectories file.*pass a directory"):
        read_run(results)


def test_a_path_that_is_no_run_directory_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match=f"holds no {TRAJECTORIES}: no such file"):
        read_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory; pass a directory written by"):
        read_run(tmp_path / "empty")
    for name in ("b", "a"):
        append_trajectories(tmp_path / "runs" / name / TRAJECTORIES, [_traj()])
    with pytest.raises(ConfigError, match=r"a folder of runs \(a, b\); pass one of them"):
        trajectories_file(tmp_path / "runs")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / RESULTS).write_text("{}")
    with pytest.raises(ConfigError, match="`timely leaderboard` report.*run directories"):
        read_run(tmp_path / "report")


def test_the_first_record_of_a_key_wins_and_unkeyed_records_all_stay(tmp_path):
    append_trajectories(
        tmp_path / TRAJECTORIES,
        [
            _traj(key="a", score=1.0),
            _traj(key="b"),
            _traj(key="a", score=0.0),  # replayed after a resume: the same episode
            _traj(seed=7),  # `timely run` records carry no key
            _traj(seed=7),
            _traj(run_id="run_1"),  # the agent endpoint keys by run id
            _traj(run_id="run_1"),
        ],
    )
    trajs = read_run(tmp_path)
    assert [episode_key(t.metadata) for t in trajs] == ["a", "b", None, None, "run_1"]
    assert trajs[0].score == 1.0
    assert len(list(iter_trajectories(tmp_path / TRAJECTORIES))) == 7  # the raw file keeps all


def test_calibration_episodes_are_left_out_unless_asked_for(tmp_path):
    append_trajectories(
        tmp_path / TRAJECTORIES, [_traj(key="e", phase="eval"), _traj(key="c", phase="calibration")]
    )
    assert [t.metadata["key"] for t in read_run(tmp_path)] == ["e"]
    assert len(read_run(tmp_path, calibration=True)) == 2


# ---- writing and resuming ------------------------------------------------------------------


def test_a_resumed_log_knows_its_done_keys_and_keeps_the_first_record(tmp_path):
    file = tmp_path / "run" / TRAJECTORIES
    with EpisodeLog(file) as log:  # the folder is made on the first append
        log.append(_traj(key="a", score=1.0))
        log.append(_traj(key="b"))
        assert file.read_bytes().count(b"\n") == 2  # flushed line by line
    again = EpisodeLog(file)
    assert "a" in again and "c" not in again and set(again.records) == {"a", "b"}
    again.append(_traj(key="a", score=0.0))
    again.close()
    assert done_keys(file) == {"a", "b"} and done_keys(tmp_path / CALIBRATION) == set()
    third = EpisodeLog(file)
    assert third.duplicates == 1 and third.records["a"].score == 1.0


def test_appending_after_a_kill_cuts_the_torn_line_off(tmp_path, caplog):
    file = tmp_path / TRAJECTORIES
    file.write_bytes(_line(_traj(key="a")) + _line(_traj(key="b"))[:55])
    log = EpisodeLog(file)
    assert set(log.records) == {"a"}  # what a resume skips
    with caplog.at_level(logging.WARNING, logger="timely.runrecord"):
        log.append(_traj(key="b"))
    log.close()
    assert "cut off a torn last line" in caplog.text
    assert [t.metadata["key"] for t in iter_trajectories(file)] == ["a", "b"]


def test_appending_after_a_lost_newline_keeps_the_complete_record(tmp_path):
    file = tmp_path / TRAJECTORIES
    file.write_bytes(_line(_traj(key="a"))[:-1])
    append_trajectories(file, [_traj(key="b")])
    assert [t.metadata["key"] for t in iter_trajectories(file)] == ["a", "b"]


def test_concurrent_appends_never_interleave_lines(tmp_path):
    file = tmp_path / TRAJECTORIES
    log = EpisodeLog(file, load=False)
    big = "x" * 200_000  # larger than any write buffer

    def write(worker: int) -> None:
        for i in range(5):
            log.append(_traj(key=f"{worker}-{i}", note=big))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert len(read_run(file)) == 20


# ---- tailing -------------------------------------------------------------------------------


def test_the_tail_reader_reads_only_what_was_appended(tmp_path):
    file = tmp_path / TRAJECTORIES
    tail = TailReader(file)
    assert tail.read() == [] and tail.stamp is None  # not written yet
    first, second = _line(_traj(seed=0)), _line(_traj(seed=1))
    file.write_bytes(first + second[:30])  # the second line is still being written
    got = tail.read()
    assert [(x.number, x.offset, x.data) for x in got] == [(1, 0, first[:-1])]
    assert tail.torn_tail and not tail.restarted
    assert tail.read() == []  # unchanged: nothing read
    with file.open("ab") as f:
        f.write(second[30:] + b"\n")
    got = tail.read()
    assert [(x.number, x.offset) for x in got] == [(2, len(first)), (3, len(first + second))]
    assert got[0].data == second[:-1] and got[1].data == b"" and not tail.torn_tail
    assert tail.read_span(got[0].offset, len(got[0].data)) == second[:-1]


def test_the_tail_reader_starts_over_when_the_file_is_replaced_or_shrinks(tmp_path):
    file = tmp_path / TRAJECTORIES
    file.write_bytes(_line(_traj(seed=0)) + _line(_traj(seed=1)))
    tail = TailReader(file)
    assert len(tail.read()) == 2
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(_line(_traj(seed=5)))
    replacement.replace(file)  # a new inode: `--no-resume` moved the old records aside
    got = tail.read()
    assert tail.restarted and [x.number for x in got] == [1]
    file.write_bytes(b"")  # truncated in place
    assert tail.read() == [] and tail.restarted
    file.unlink()
    assert tail.read() == [] and tail.stamp is None
