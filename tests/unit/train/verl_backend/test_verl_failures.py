"""The failed-group rule of the verl backend: counted per worker, fatal past the share."""

from __future__ import annotations

import logging
import sys

import pytest

from tests.helpers.verl_rows import small_config
from timely.errors import ConfigError
from timely.train.verl.failures import (
    VERL_WORKER_LOGGER,
    FailureRule,
    GroupFailures,
    RolloutsAborted,
    worker_failures,
)
from timely.train.verl.launch import preflight, run_logged


def test_the_share_trips_only_after_enough_groups(tmp_path):
    abort = tmp_path / "ABORTED"
    failures = GroupFailures(FailureRule(0.2, 4, str(abort), str(tmp_path / "f.jsonl")))
    for uid in "abc":
        failures.start(uid)
    failures.fail("a", "ToolServerUnavailable: gone")
    assert failures.share == pytest.approx(1 / 3) and not abort.exists()  # 3 < 4 groups
    failures.start("d")
    failures.fail("d", "ToolServerUnavailable: gone")
    assert abort.exists() and "2 of 4 prompt groups failed" in abort.read_text()
    with pytest.raises(RolloutsAborted, match="the run is stopping"):
        failures.start("e")
    assert len((tmp_path / "f.jsonl").read_text().splitlines()) == 2


def test_another_workers_abort_file_stops_this_one(tmp_path):
    abort = tmp_path / "ABORTED"
    abort.write_text("3 of 10 prompt groups failed")
    with pytest.raises(RolloutsAborted, match="3 of 10"):
        GroupFailures(FailureRule(0.5, 1, str(abort))).start("a")


def test_verls_failed_group_log_lines_are_counted(tmp_path):
    failures = worker_failures(FailureRule(1.0, 1, None, None))
    failures.start("u1")
    logger = logging.getLogger(VERL_WORKER_LOGGER)
    try:
        raise KeyError("timely_score")
    except KeyError as exc:
        logger.error("Error in _run_prompt for uid=u1", exc_info=(type(exc), exc, None))
    logger.error("something else")
    assert failures.failed == {"u1"} and failures.share == 1.0


def test_the_launcher_stops_verl_when_the_abort_file_appears(tmp_path):
    abort = tmp_path / "ABORTED"
    chatty = "import sys, itertools\nfor i in itertools.count():\n    print(i, flush=True)\n"
    write = f"open({str(abort)!r}, 'w').write('too many')\n"
    code = run_logged([sys.executable, "-c", write + chatty], tmp_path / "log", abort_file=abort)
    assert code == 1


def test_preflight_names_what_is_missing_and_how_to_install_it():
    config = small_config()
    config = config.model_copy(
        update={
            "verl": config.verl.model_copy(
                update={"attention": "flash_attention_2", "python": sys.executable}
            )
        }
    )
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="flash_attn.*\n.*pip install flash-attn"):
            preflight(config)
    else:  # pragma: no cover - a GPU environment
        pytest.skip("flash-attn is installed here")
