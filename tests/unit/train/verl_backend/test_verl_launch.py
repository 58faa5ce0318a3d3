"""The verl launcher: run directory, tool server processes, the command, a resumed rerun.

verl itself is replaced by a runner that does what verl's workers do with the files: read the
agent loop's settings, reach the tool servers and play an exported row over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import shlex

import httpx2
import pytest
import yaml
from datasets import load_dataset

from tests.helpers.tiny_model import tiny_tokenizer
from tests.helpers.token_server import ScriptedTokenServer
from tests.helpers.verl_rows import small_config
from timely.errors import ConfigError
from timely.toolclient import ToolClient
from timely.train.verl.launch import launch, plan
from timely.train.verl.rollout import AgentSettings, play_row, row_task

pytestmark = pytest.mark.timeout(120)


def test_launch_prepares_the_run_serves_the_tools_and_runs_the_command(tmp_path):
    tok = tiny_tokenizer()
    config = small_config(out=str(tmp_path / "run"))
    seen = {}

    def fake_verl(command, log):
        run = plan(config)
        seen["command"], seen["log"] = command, log
        loops = yaml.safe_load(run.agent_loops.read_text())
        seen["loops"] = loops
        settings = AgentSettings.model_validate_json(open(loops[0]["settings_path"]).read())
        seen["urls"] = settings.tool_servers
        row = load_dataset("parquet", data_files=str(run.train_file), split="train")[0]
        task, _ = row_task(row["extra_info"])
        answer = f"{task.solution().answer}<|im_end|>"

        async def one_rollout():
            url = settings.tool_server(row["extra_info"]["latency"])
            async with ToolClient(url) as tools:
                return await play_row(
                    ScriptedTokenServer(tok, [answer]),
                    tok,
                    row["extra_info"],
                    settings,
                    tools,
                    sampling_params={},
                    prompt_length=config.verl.prompt_length,
                    response_length=config.verl.response_length,
                )

        seen["rollout"] = asyncio.run(one_rollout())
        return 0

    lines = []
    assert launch(config, tokenizer=tok, runner=fake_verl, say=lines.append) == 0
    run = plan(config)
    for path in (run.train_file, run.val_file, run.dir / "config.yaml", run.dir / "manifest.json"):
        assert path.is_file(), path
    assert shlex.split((run.dir / "command.sh").read_text().splitlines()[1]) == seen["command"]
    assert seen["command"][1:3] == ["-m", "verl.trainer.main_ppo"]
    assert f"data.train_files={run.train_file}" in seen["command"]
    assert seen["loops"][0]["_target_"] == "timely.train.verl.agent_loop.TimelyAgentLoop"
    assert set(seen["urls"]) == set(config.rl.latencies)  # one server per latency
    assert seen["rollout"].trajectory.score == 1.0  # played over HTTP during the run
    assert "gpu_env" in json.loads((run.dir / "manifest.json").read_text())
    for url in seen["urls"].values():  # stopped with the run
        with pytest.raises(httpx2.TransportError):
            httpx2.get(f"{url}/health", timeout=1, trust_env=False)
    assert any("exporting" in line for line in lines)

    assert f"hydra.run.dir={run.logs / 'hydra'}" in seen["command"]  # no outputs/ in the cwd

    # The same command again reuses the data (a killed run continues where it stopped), and so
    # does one that changes only how it trains.
    before = run.train_file.stat().st_mtime_ns
    lines.clear()
    config = config.model_copy(update={"rl": config.rl.model_copy(update={"lr": 1e-3})})
    assert launch(config, tokenizer=tok, runner=lambda c, log: 3, say=lines.append) == 3
    assert run.train_file.stat().st_mtime_ns == before
    assert any("reusing the exported data" in line for line in lines)


def test_given_tool_servers_are_checked_before_anything_runs(tmp_path):
    config = small_config(out=str(tmp_path / "run"))
    dead = {lat: "http://127.0.0.1:9" for lat in config.rl.latencies}
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"tool_servers": dead})}
    )
    ran = []
    with pytest.raises(ConfigError, match="is not reachable.*timely tool-server"):
        launch(
            config,
            tokenizer=tiny_tokenizer(),
            runner=lambda c, log: ran.append(c) or 0,
            say=lambda s: None,
        )
    assert ran == []


def test_without_verl_the_launcher_says_how_to_install_it(tmp_path):
    config = small_config(out=str(tmp_path / "run"))
    config = config.model_copy(update={"verl": config.verl.model_copy(update={"python": "false"})})
    with pytest.raises(ConfigError, match="requirements/verl-gpu.txt"):
        launch(config, say=lambda s: None)
