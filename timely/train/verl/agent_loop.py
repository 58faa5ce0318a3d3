"""``TimelyAgentLoop``: verl's agent loop that plays Timely episodes (imports verl).

verl builds one agent loop per rollout inside its agent-loop workers (Ray actors), through
``hydra.utils.instantiate`` of an entry in ``rollout.agent.agent_loop_config_path``:

.. code-block:: yaml

    - name: timely_agent
      _target_: timely.train.verl.agent_loop.TimelyAgentLoop
      settings_path: runs/verl/timely_verl.json

``timely-rl --backend verl`` writes that file and the settings next to it. A ``@register``
decorator would only run where this module is imported, which verl's workers never do; the
config file is imported by them.

The episode is played by :func:`timely.train.verl.rollout.play_row` (the one loop on verl's
server manager); this class only adapts verl's arguments and output type, and counts the prompt
groups it runs for the failure rule (:mod:`timely.train.verl.failures`).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
)

from timely.policies.hf_models import local_generation_config
from timely.toolclient import ToolClient
from timely.train.verl.failures import worker_failures
from timely.train.verl.rollout import AgentSettings, play_row


@functools.cache
def load_settings(path: str) -> AgentSettings:
    """The run's settings (read once per worker process)."""
    return AgentSettings.model_validate_json(Path(path).read_text())


# One HTTP client per (event loop, URL): verl builds an agent loop per rollout, and a client per
# rollout would open a connection pool per episode.
_clients: dict[tuple[int, str], ToolClient] = {}


async def tool_client(url: str) -> ToolClient:
    key = (id(asyncio.get_running_loop()), url)
    if key not in _clients:
        _clients[key] = await ToolClient(url).__aenter__()
    return _clients[key]


class TimelyAgentLoop(AgentLoopBase):
    """Plays the row's task instance under its drawn setting on verl's rollout server.

    Args:
        settings_path: the run's ``timely_verl.json`` (:class:`AgentSettings`).
        **kwargs: what verl passes every agent loop (config, server manager, tokenizer, ...).
    """

    def __init__(self, *args: Any, settings_path: str, **kwargs: Any) -> None:
        kwargs.pop("tools", None)  # verl's own tool list: ours come from the tool server
        super().__init__(*args, **kwargs)
        self.settings = load_settings(str(settings_path))
        self.failures = worker_failures(self.settings.failure_rule())

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        extra_info = dict(kwargs.get("extra_info") or {})
        # verl's v1 worker passes the group's uid and the step it started the rollout at.
        self.failures.start(str(kwargs.get("uid", kwargs.get("index", ""))))
        steps = kwargs.get("global_steps")
        settings = self.settings
        latency = str(extra_info.get("latency", ""))
        tools = await tool_client(settings.tool_server(latency))
        out = await play_row(
            self.server_manager,
            self.tokenizer,
            extra_info,
            settings,
            tools,
            sampling_params=sampling_params,
            prompt_length=self.rollout_config.prompt_length,
            response_length=self.rollout_config.response_length,
            global_steps=None if steps is None else int(steps),
            chat_template_kwargs=_plain(self.apply_chat_template_kwargs),
            generation_config=local_generation_config(
                str(self.config.actor_rollout_ref.model.path)
            ),
        )
        out.extra_fields["timely_failed_group_share"] = self.failures.share
        return AgentLoopOutput(
            prompt_ids=out.prompt_ids,
            response_ids=out.response_ids,
            response_mask=out.response_mask,
            response_logprobs=out.response_logprobs,
            num_turns=out.num_turns,
            metrics=AgentLoopMetrics(generate_sequences=out.gen_wall_s, tool_calls=out.tool_wall_s),
            extra_fields=out.extra_fields,
        )


def _plain(kwargs: Any) -> dict[str, Any]:
    """verl's ``data.apply_chat_template_kwargs`` (an OmegaConf node) as a plain dict."""
    if isinstance(kwargs, DictConfig):
        return dict(OmegaConf.to_container(kwargs, resolve=True))  # type: ignore[arg-type]
    return dict(kwargs or {})
