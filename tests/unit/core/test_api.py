"""The public API of ``timely`` (docs/api.md): its names resolve, and the documented code runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import timely

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def test_every_public_name_resolves_to_its_defining_module():
    assert sorted(timely.__all__) == sorted(["__version__", *timely._EXPORTS])
    for name, module in timely._EXPORTS.items():
        obj = getattr(timely, name)
        assert obj.__module__ == module, f"timely.{name} comes from {obj.__module__}"
        assert name in dir(timely)


def test_the_names_are_the_library_objects():
    from timely.loop import run_episode
    from timely.task import make_task
    from timely_eval.runner import run_suite
    from timely_eval.suite import load_suite

    assert timely.run_episode is run_episode and timely.make_task is make_task
    assert timely.load_suite is load_suite and timely.run_suite is run_suite


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'run_episodes'"):
        timely.run_episodes  # noqa: B018


def test_the_documented_code_runs(tmp_path):
    # One script, top to bottom, in an empty directory: what a reader pasting it would get.
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3, "docs/api.md lost its examples"
    script = tmp_path / "api_example.py"
    script.write_text("\n\n".join(blocks))
    res = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=240
    )
    assert res.returncode == 0, res.stderr
    assert "math/arithmetic-v1 answered 1.0 True" in res.stdout
    assert "(paper)" in res.stdout
    assert res.stdout.count("budget") == 8  # 2 policies x 2 latencies x 2 budgets
    assert (tmp_path / "runs" / "crossover" / "results.json").exists()
