"""``timely-rl --backend verl``: export the data, serve the tools, write verl's config, run verl.

One run directory (``out``) holds everything, on a filesystem every node sees:

* ``data/train.parquet``, ``data/test.parquet``: the rows (:mod:`timely.train.verl.data`),
  exported once per data config (``data/stamp.json``) and reused by a rerun;
* ``agent_loops.yaml``: registers ``timely_agent`` with verl
  (``rollout.agent.agent_loop_config_path``);
* ``timely_verl.json``: the settings every rollout reads (RL config, tool server URLs);
* ``command.sh``: the exact ``python -m verl.trainer.main_ppo`` command with its overrides;
* ``config.yaml`` and ``manifest.json``: the resolved config, versions and seeds;
* ``logs/verl.log``, ``logs/tool-server-*.log``; ``checkpoints/`` (verl resumes from it, so the
  same command continues a killed run).

One tool server per latency is started as its own process (or the URLs in
``verl.tool_servers`` are checked), health-checked at the address the workers will use, and
stopped when verl exits.

Before any of that, :func:`preflight` checks that the interpreter that runs verl imports
everything the chosen trainer path does (vLLM for rollouts, TransferQueue for verl's default v1
trainer, flash-attn when ``verl.attention`` asks for it), and names the install line for what is
missing. While verl runs, the launcher watches the run's abort file: when failed prompt groups
pass ``verl.max_failed_share`` (:mod:`timely.train.verl.failures`), it stops verl and exits
non-zero with the reason.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from timely.config import config_hash, dump_yaml
from timely.errors import ConfigError
from timely.extras import require_extra
from timely.tool_servers import tool_server_process
from timely.train.verl.config import AGENT_NAME, VerlConfig, verl_overrides
from timely.train.verl.rollout import AgentSettings

Runner = Callable[[list[str], Path], int]  # (command, log file) -> exit code


@dataclass(frozen=True)
class VerlRun:
    """The files of one run directory and the command that trains on them."""

    dir: Path
    config: VerlConfig

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def train_file(self) -> Path:
        return self.data_dir / "train.parquet"

    @property
    def val_file(self) -> Path:
        return self.data_dir / "test.parquet"

    @property
    def agent_loops(self) -> Path:
        return self.dir / "agent_loops.yaml"

    @property
    def settings(self) -> Path:
        return self.dir / "timely_verl.json"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def abort_file(self) -> Path:
        return self.dir / "ABORTED"

    @property
    def command(self) -> list[str]:
        from timely.train.verl import reward

        python = self.config.verl.python or sys.executable
        return [
            python,
            "-m",
            "verl.trainer.main_ppo",
            *verl_overrides(
                self.config,
                train_file=str(self.train_file),
                val_file=str(self.val_file),
                agent_loop_config=str(self.agent_loops),
                reward_file=str(Path(reward.__file__).resolve()),
                checkpoint_dir=str(self.dir / "checkpoints"),
                hydra_dir=str(self.logs / "hydra"),
            ),
        ]

    def agent_loops_yaml(self) -> str:
        entry = {
            "name": AGENT_NAME,
            "_target_": "timely.train.verl.agent_loop.TimelyAgentLoop",
            "settings_path": str(self.settings),
        }
        return yaml.safe_dump([entry], sort_keys=False)


def plan(config: VerlConfig) -> VerlRun:
    """The run of ``config`` (absolute paths: verl's workers run elsewhere)."""
    model = Path(config.verl.model).expanduser()
    if model.is_dir():  # a local model directory, not a hub id
        verl = config.verl.model_copy(update={"model": str(model.resolve())})
        config = config.model_copy(update={"verl": verl})
    return VerlRun(Path(config.out).resolve(), config)


def dry_run_text(run: VerlRun) -> str:
    """What ``--dry-run`` prints: the command, the agent-loop registration and the config."""
    return (
        "# verl command (written to command.sh by a real run)\n"
        f"{shlex.join(run.command)}\n\n"
        f"# {run.agent_loops}\n{run.agent_loops_yaml()}\n"
        f"# resolved timely config\n{dump_yaml(run.config)}"
    )


def launch(
    config: VerlConfig,
    *,
    tokenizer: Any = None,
    runner: Runner | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Prepare the run directory, serve the tools and run verl; return verl's exit code.

    Args:
        config: the resolved config.
        tokenizer: the trained model's tokenizer (default: loaded from ``verl.model``); data
            budgets are calibrated with its token counts.
        runner: runs the command (default: a subprocess, its output shown and logged).
        progress: ``(split, rows done, rows)`` while the data is exported.
        say: where status lines go.
    """
    run = plan(config)
    run.logs.mkdir(parents=True, exist_ok=True)
    if runner is None:
        preflight(config)
    run.abort_file.unlink(missing_ok=True)  # a rerun after the cause was fixed
    if _export_needed(run):
        say(f"exporting {config.verl.train_prompts} train and {config.verl.val_prompts} test rows")
        from timely.train.verl.data import export_data

        tok = tokenizer if tokenizer is not None else _load_tokenizer(config.verl.model)
        export_data(config, tok, run.data_dir, progress=progress)
        _stamp(run).write_text(json.dumps(_data_key(config), indent=2) + "\n")
    else:
        say(f"reusing the exported data in {run.data_dir}")
    from timely.runrecord import write_run_record

    write_run_record(run.dir, config, seeds=[config.rl.seed], extra={"gpu_env": _gpu_versions()})
    run.agent_loops.write_text(run.agent_loops_yaml())
    (run.dir / "command.sh").write_text("#!/bin/sh\n" + shlex.join(run.command) + "\n")
    with served_tools(config, run.logs) as urls:
        settings = AgentSettings(
            rl=config.rl,
            tool_servers=urls,
            max_failed_share=config.verl.max_failed_share,
            failed_min_groups=config.verl.failed_min_groups,
            abort_file=str(run.abort_file),
            failure_log=str(run.logs / "failed-groups.jsonl"),
        )
        run.settings.write_text(settings.model_dump_json(indent=2) + "\n")
        for latency, url in urls.items():
            say(f"tool server {latency}: {url}")
        say(f"running verl (log: {run.logs / 'verl.log'})")
        if runner is None:
            code = run_logged(run.command, run.logs / "verl.log", abort_file=run.abort_file)
        else:
            code = runner(run.command, run.logs / "verl.log")
    if run.abort_file.exists():
        say(f"stopped: {run.abort_file.read_text()}")
        return code or 1
    return code


@contextlib.contextmanager
def served_tools(config: VerlConfig, logs: Path) -> Iterator[dict[str, str]]:
    """latency -> URL for every ``rl.latencies`` entry: the given servers (checked), or one
    ``timely tool-server`` process per latency, stopped when the block exits."""
    given = config.verl.tool_servers
    if given:
        for latency, url in given.items():
            _check_health(latency, url)
        yield dict(given)
        return
    host = config.verl.tool_host
    # Bound to every interface, the servers are reached by name from the other nodes.
    advertised = socket.gethostname() if host == "0.0.0.0" else host
    with contextlib.ExitStack() as stack:
        urls = {}
        for i, latency in enumerate(config.rl.latencies):
            url, _ = stack.enter_context(
                tool_server_process(
                    "--latency",
                    latency,
                    "--seed",
                    str(config.rl.seed + i),
                    host=host,
                    log=logs / f"tool-server-{i}.log",
                )
            )
            urls[latency] = url.replace("127.0.0.1", advertised, 1) if host == "0.0.0.0" else url
            # Checked where the workers will knock (the advertised name), not on loopback.
            _check_health(latency, urls[latency])
        yield urls


def run_logged(command: list[str], log: Path, *, abort_file: Path | None = None) -> int:
    """Run ``command``, its output shown and appended to ``log``; Ctrl-C stops it cleanly.

    Args:
        command: the command.
        log: appended with its output.
        abort_file: when it appears (checked at every output line: verl logs every failed
            group, so failures make lines), the command is stopped and 1 returned.
    """
    with open(log, "ab") as sink:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sink.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                if abort_file is not None and abort_file.exists():
                    _stop(proc)
                    return 1
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # verl's driver shuts Ray down on SIGINT
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _check_health(latency: str, url: str) -> None:
    import httpx2

    try:
        ok = httpx2.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200
    except httpx2.TransportError as exc:
        raise ConfigError(
            f"tool server for {latency} at {url} is not reachable ({exc}); start it with "
            f"`timely tool-server --host 0.0.0.0 --latency {latency}` or leave "
            "verl.tool_servers empty to have the launcher start one"
        ) from None
    if not ok:
        raise ConfigError(f"tool server for {latency} at {url} answered /health with an error")


# What verl 0.9.1's trainer path imports that its base wheel may lack, and what installs it.
_GPU_ENV = (
    "the GPU environment, from the repository root: pip install -e '.[verl]' -r "
    "requirements/verl-gpu.txt (docs/scale.md)"
)
_TRANSFER_QUEUE = "pip install TransferQueue==0.1.11 (the [verl] extra brings it)"
_FLASH_ATTN = "pip install flash-attn --no-build-isolation (after torch, in the GPU environment)"


def trainer_imports(config: VerlConfig) -> list[tuple[str, str]]:
    """``(module, how to install it)`` for every module the configured trainer path imports.

    verl itself and its agent-loop layer; vLLM (``rollout.name=vllm``); TransferQueue for
    verl's default v1 trainer (unless ``verl.overrides`` sets ``trainer.use_v1=false``);
    flash-attn when ``verl.attention`` is ``flash_attention_2``.
    """
    out = [
        ("verl", _GPU_ENV),
        ("verl.experimental.agent_loop", _GPU_ENV),
        ("vllm", _GPU_ENV),
    ]
    given = dict(o.lstrip("+").split("=", 1) for o in config.verl.overrides if "=" in o)
    if given.get("trainer.use_v1", "true").lower() not in ("false", "0"):
        out.append(("transfer_queue", _TRANSFER_QUEUE))
    if config.verl.attention == "flash_attention_2":
        out.append(("flash_attn", _FLASH_ATTN))
    return out


def preflight(config: VerlConfig) -> None:
    """Fail before any work when the interpreter that runs verl lacks a module the run imports.

    Raises:
        MissingExtra: this interpreter lacks what the launcher itself needs (the tokenizer that
            calibrates the data, HF datasets that write it): the [train] extra.
        ConfigError: naming every missing module and the line that installs it.
    """
    require_extra("train", "timely-rl --backend verl (its data export)")
    python = config.verl.python or sys.executable
    needed = trainer_imports(config)
    probe = subprocess.run(
        [python, "-c", _PROBE, *(module for module, _ in needed)],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        missing = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ConfigError(
            f"{python} could not check the modules verl needs ({probe.stderr.strip()[-300:]}); "
            f"install {_GPU_ENV} or point verl.python at an interpreter that has it"
        ) from None
    if missing:
        hints = dict(needed)
        lines = [f"  {m}: {why}\n    install: {hints[m]}" for m, why in missing.items()]
        raise ConfigError(
            f"{python} cannot import what this verl run needs:\n"
            + "\n".join(lines)
            + "\n(or point verl.python at an interpreter that has them)"
        )


# Imports each module named on the command line; prints {module: error} for those that fail.
_PROBE = """
import importlib, json, sys
missing = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing[name] = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps(missing))
"""


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


# The rl fields the exported rows depend on (changing lr or the loss keeps the data).
_DATA_FIELDS = {
    "tasks",
    "task_options",
    "budget_multipliers",
    "no_limit_share",
    "speed_factor",
    "latencies",
    "time_modes",
    "speed",
    "calibration",
    "seed",
}


def _data_key(config: VerlConfig) -> dict[str, Any]:
    v = config.verl
    return {
        "rl": config_hash(config.rl, exclude=set(type(config.rl).model_fields) - _DATA_FIELDS),
        "model": v.model,
        "train_prompts": v.train_prompts,
        "val_prompts": v.val_prompts,
        "prompt_length": v.prompt_length,
        "val_budget_multipliers": list(v.val_budget_multipliers),
    }


def _stamp(run: VerlRun) -> Path:
    return run.data_dir / "stamp.json"


def _export_needed(run: VerlRun) -> bool:
    try:
        same = json.loads(_stamp(run).read_text()) == _data_key(run.config)
    except (OSError, ValueError):
        return True
    return not (same and run.train_file.is_file() and run.val_file.is_file())


def _gpu_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("verl", "vllm", "ray", "flash-attn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
