"""The trained policy on the fast path: the shipped adapter merged and exported to GGUF (by
``timely-rl export-gguf`` and on first use of ``llamacpp:smollm2-135m-timely``) runs in llama.cpp
with the merged transformers model's greedy tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from timely.cli_rl import app
from timely.clock import VirtualClock
from timely.policies import gguf_export
from timely.policies.base import Deadline, make_policy
from timely.policies.hf_models import shipped_adapter_path
from timely.task import make_task
from timely.types import Message

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
AGREE = 8  # leading greedy tokens that must match the merged transformers model


def prompts() -> list[tuple[list[Message], list[dict]]]:
    task = make_task("math/arithmetic-v1", seed=0, split="test")
    return [
        ([Message(role="user", content=task.spec.prompt)], [CALCULATOR]),
        ([Message(role="user", content="Explain photosynthesis in one sentence.")], []),
    ]


async def greedy(policy, messages, tools) -> list[int]:
    out = await policy.generate(messages, tools, deadline=Deadline(at=1e9, clock=VirtualClock()))
    return out.token_ids


@pytest.mark.slow
async def test_the_cli_export_runs_like_the_merged_model(tmp_path):
    out = tmp_path / "timely.gguf"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    bin_dir = Path(sys.executable).parent
    adapter = shipped_adapter_path("smollm2-135m-timely")
    res = subprocess.run(
        [str(bin_dir / "timely-rl"), "export-gguf", "--adapter", str(adapter), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "llamacpp:" in res.stdout
    fast = make_policy(f"llamacpp:{out}", max_new_tokens=16, n_threads=1, n_ctx=2048)
    reference = make_policy("hf:smollm2-135m-timely", max_new_tokens=16)
    for messages, tools in prompts():
        assert fast.prompt_ids(messages, tools) == reference.prompt_ids(messages, tools)
        ours = await greedy(fast, messages, tools)
        theirs = await greedy(reference, messages, tools)
        assert ours[:AGREE] == theirs[:AGREE]


@pytest.mark.slow
async def test_the_named_policy_exports_once_and_reuses_the_file(tmp_path, monkeypatch):
    policy = make_policy(
        "llamacpp:smollm2-135m-timely", cache_dir=str(tmp_path), max_new_tokens=8, n_threads=1
    )
    files = list(tmp_path.glob("*.gguf"))
    assert len(files) == 1 and "-f16-" in files[0].name
    assert policy.name == "llamacpp:smollm2-135m-timely"

    def no_second_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(gguf_export, "export_adapter_gguf", no_second_export)
    again = make_policy("llamacpp:smollm2-135m-timely", cache_dir=str(tmp_path), n_threads=1)
    messages, tools = prompts()[0]
    assert await greedy(again, messages, tools)


def test_the_cli_reports_a_bad_adapter(tmp_path):
    res = CliRunner().invoke(
        app, ["export-gguf", "--adapter", str(tmp_path), "--out", str(tmp_path / "x.gguf")]
    )
    assert res.exit_code == 2
    assert "is not a peft adapter directory" in " ".join(res.output.split())
    res = CliRunner().invoke(
        app,
        ["export-gguf", "--adapter", str(tmp_path), "--out", "x.gguf", "--dtype", "q2"],
    )
    assert res.exit_code == 2 and "dtype" in res.output
