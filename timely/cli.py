"""The ``timely`` command. Thin: parse flags into config overrides and call the library.

This is the composition root: it wires the core to the layers above it (the eval commands, the
tool server), which it names as ``module:attr`` strings imported when a command runs, so the core
library itself imports neither.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from timely.errors import TimelyError
from timely.registry import load_object

# The layers above the core, resolved by the commands that need them.
EVAL_COMMAND = "timely_eval.commands:eval_command"
LEADERBOARD_COMMAND = "timely_eval.commands:leaderboard_command"
EXPORT_COMMAND = "timely_eval.export:export_command"
COMPARE_COMMAND = "timely_eval.compare:compare_command"
SERVE = "timely_server.app:serve"
BUILD_SERVER_CONFIG = "timely_server.config:build_server_config"

app = typer.Typer(
    name="timely",
    help="Timely Machine: agents that plan under wall-clock time budgets.\n\n"
    "Start with `timely run --task math/arithmetic --policy scripted:oracle --budget 30`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides as key.sub=value, e.g. episode.max_turns=8."),
]


def _flag_overrides(**flags: object) -> list[str]:
    """Turn the flags a user actually gave into ``key=value`` overrides."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


TaskOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--task-option",
        "-T",
        help="Task option KEY=VALUE (repeatable), e.g. -T path=data/items.jsonl or "
        "-T difficulty=3.",
    ),
]


def _key_values(items: list[str] | None, flag: str) -> dict[str, object]:
    """``KEY=VALUE`` flags as a dict, values read as YAML scalars (3, true, a string)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{flag} {item!r} must look like KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


@app.command()
def run(
    overrides: Overrides = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="Run config: a shipped name (math-smoke) or a YAML path."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task id (see `timely tasks`).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="scripted:oracle | hf:smollm2-135m | hf:/dir | openai:MODEL."),
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="Time budget in seconds (default: the task's own).")
    ] = None,
    latency: Annotated[
        str | None, typer.Option(help="Tool latency, e.g. constant:1.0, lognormal:1.0,0.6.")
    ] = None,
    clock: Annotated[str | None, typer.Option(help="virtual (simulated) or wall (real).")] = None,
    seed: Annotated[int | None, typer.Option(help="First episode seed.")] = None,
    episodes: Annotated[int | None, typer.Option(help="Number of episodes.")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory.")] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible URL (openai: policies).")
    ] = None,
    time_status: Annotated[
        str | None,
        typer.Option("--time-status", help="default | paper | push | pull | both | blind."),
    ] = None,
    speed: Annotated[
        str | None,
        typer.Option(help="Virtual clock speed profile: small-fast, large-slow, smollm2-cpu."),
    ] = None,
    overrun: Annotated[str | None, typer.Option(help="hard (default) or late.")] = None,
    tool_server: Annotated[
        str | None, typer.Option("--tool-server", help="URL of a running tool server.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-step trace.")] = False,
    live: Annotated[
        bool, typer.Option("--live", help="Print each step as it happens (from step events).")
    ] = False,
    task_option: TaskOptions = None,
) -> None:
    """Play episodes of a task with a policy, print a trace, write trajectories.jsonl."""
    from timely.config import RunConfig, load_config
    from timely.run import run as run_episodes
    from timely.runrecord import TRAJECTORIES
    from timely.trace import print_trace, summary_table

    flags = _flag_overrides(
        task=task,
        policy=policy,
        **{"budget.seconds": budget, "budget.overrun": overrun},
        latency=latency,
        clock=clock,
        seed=seed,
        episodes=episodes,
        out=out,
        **{
            "policy_options.base_url": base_url,
            "episode.time": time_status,
            "episode.speed": speed,
        },
        tool_server=tool_server,
    )
    for key, value in _key_values(task_option, "-T").items():  # difficulty is a field of its own
        flags.append(f"{'' if key == 'difficulty' else 'task_options.'}{key}={json.dumps(value)}")
    cfg = load_config(RunConfig, config, [*flags, *(overrides or [])], kind="run")
    console.print(
        f"[bold]timely run[/] {cfg.task} · {cfg.policy} · budget "
        + (f"{cfg.budget.seconds:g}s" if cfg.budget.seconds else "the task's default")
        + f" · latency {cfg.latency} · {cfg.clock} clock → {cfg.out}"
    )
    show = (lambda t: print_trace(t, console)) if not quiet else None
    if cfg.policy.startswith("hf:"):
        console.print("loading model (the first load of the embedded model takes ~15 s)…")
    observer = None
    if live:
        from timely.trace import live_line

        def observer(seed: int):
            def show_event(event) -> None:
                if (line := live_line(seed, event)) is not None:
                    console.print(line)

            return show_event

        show = None  # the live lines are the trace
    result = asyncio.run(run_episodes(cfg, on_episode=show, observer=observer))
    if len(result.trajectories) > 1:
        console.print(summary_table(result.trajectories))
    console.print(f"wrote {result.run_dir / TRAJECTORIES}")


@app.command()
def tasks() -> None:
    """List registered tasks."""
    from rich.table import Table

    from timely.task import TASKS

    table = Table("task", "description")
    for name, text in TASKS.described().items():
        table.add_row(name, text)
    console.print(table)


@app.command()
def policies() -> None:
    """List policy backends and the scripted baselines."""
    from rich.table import Table

    from timely.policies.base import backend_help

    table = Table("policy", "description")
    for prefix, help in backend_help().items():
        table.add_row(f"{prefix}:…", help)
    console.print(table)


@app.command("tool-server")
def tool_server_cmd(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="ServerConfig: a shipped name (example) or a YAML path (flags override it).",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1, loopback).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8700).")] = None,
    latency: Annotated[
        str | None, typer.Option(help="Default latency spec, e.g. lognormal:1.0,0.6.")
    ] = None,
    latency_profile: Annotated[
        str | None,
        typer.Option(
            "--latency-profile",
            help="A shipped profile (zero, fast, medium, slow, very-slow, jericho-reference) "
            "or a YAML path.",
        ),
    ] = None,
    tool_latency: Annotated[
        list[str] | None,
        typer.Option("--tool-latency", help="Per-tool override NAME=SPEC (repeatable)."),
    ] = None,
    faults: Annotated[
        str | None,
        typer.Option(help="Fault rates of every tool, e.g. error=0.05,5xx=0.01,hang=0.01."),
    ] = None,
    tool_faults: Annotated[
        list[str] | None,
        typer.Option("--tool-faults", help="Per-tool fault rates NAME=RATES (repeatable)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Latency and fault sampling seed.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TIMELY_TOOL_SERVER_API_KEY",
            help="Bearer token required on every route but /health.",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="TIMELY_TOOL_SERVER_ADMIN_TOKEN",
            help="Bearer token of /admin (default: the api key).",
        ),
    ] = None,
    session_ttl: Annotated[
        float | None, typer.Option("--session-ttl", help="Idle seconds before a session expires.")
    ] = None,
    max_sessions: Annotated[
        int | None, typer.Option("--max-sessions", help="Live sessions at most (then 429).")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Calls in flight at most (then 429).")
    ] = None,
    mcp: Annotated[
        bool | None, typer.Option("--mcp/--no-mcp", help="Serve MCP at /mcp (default on).")
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option("--access-log/--no-access-log", help="JSON access log on stderr (on)."),
    ] = None,
) -> None:
    """Start the simulated tool server (FastAPI + uvicorn; plain HTTP and MCP at /mcp)."""
    serve = load_object(SERVE)
    build_server_config = load_object(BUILD_SERVER_CONFIG)

    def pairs(items: list[str] | None, flag: str) -> dict[str, str]:
        out = {}
        for item in items or []:
            name, sep, value = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"{flag} {item!r} must look like NAME=VALUE")
            out[name] = value
        return out

    cfg = build_server_config(
        config,
        host=host,
        port=port,
        latency=latency,
        latency_profile=latency_profile,
        per_tool_latency=pairs(tool_latency, "--tool-latency"),
        faults=faults,
        per_tool_faults=pairs(tool_faults, "--tool-faults"),
        seed=seed,
        api_key=api_key,
        admin_token=admin_token,
        session_ttl_s=session_ttl,
        max_live_sessions=max_sessions,
        max_concurrency=max_concurrency,
        mcp=mcp,
        access_log=access_log,
    )
    if "access_log" not in cfg.model_fields_set:  # on by default when run as a command
        cfg = cfg.model_copy(update={"access_log": True})
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    auth = "bearer token required" if cfg.api_key else "no auth"
    console.print(
        f"tool server on http://{shown}:{cfg.port} · latency {cfg.latency_config().describe()} · "
        f"faults {cfg.fault_config().describe()} · {auth} · MCP at /mcp · docs at /docs",
        soft_wrap=True,
    )
    serve(cfg)


@app.command("serve")
def serve_cmd(
    config: Annotated[
        str | None, typer.Option("--config", help="YAML ServeConfig (flags override it).")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="The agent's model: llamacpp:smollm2-135m (default), "
            "llamacpp:smollm2-135m-timely, hf:NAME, openai:MODEL --base-url URL."
        ),
    ] = None,
    tools: Annotated[
        str | None,
        typer.Option(help="URL of a running `timely tool-server` (default: built-in tools)."),
    ] = None,
    tool_latency: Annotated[
        str | None,
        typer.Option("--tool-latency", help="Built-in tools only: latency, e.g. constant:0.5."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1, loopback).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8800).")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TIMELY_SERVE_API_KEY",
            help="Bearer token required on every route but /health.",
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible URL (openai: policies).")
    ] = None,
    max_concurrent_runs: Annotated[
        int | None,
        typer.Option("--max-concurrent-runs", help="Runs in flight at most (then 429)."),
    ] = None,
    default_budget: Annotated[
        float | None,
        typer.Option("--default-budget", help="Budget in seconds of requests that name none."),
    ] = None,
    max_budget: Annotated[
        float | None, typer.Option("--max-budget", help="Largest budget a request may ask for.")
    ] = None,
    default_tools: Annotated[
        str | None,
        typer.Option(
            "--default-tools", help="Comma-separated tools a chat request that names none gets."
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Run directory: every finished run is appended to trajectories.jsonl."),
    ] = None,
    dashboard: Annotated[
        list[Path] | None,
        typer.Option("--dashboard", help="Also show this run or report directory at / (repeat)."),
    ] = None,
    allow_task_files: Annotated[
        bool | None,
        typer.Option(
            "--allow-task-files/--no-allow-task-files",
            help="Let clients name files on this machine in task_options (math/jsonl path, "
            "ml/dir path, ...): trusted clients only (default off: 403 forbidden_option).",
        ),
    ] = None,
) -> None:
    """Serve the time-aware agent over HTTP: /v1/runs, OpenAI /v1/chat/completions, dashboard."""
    from pydantic import ValidationError

    from timely.config import load_config
    from timely.serve.app import serve
    from timely.serve.config import ServeConfig

    base = load_config(ServeConfig, config, kind="serve")
    flags = {
        "policy": policy,
        "tools": tools,
        "tool_latency": tool_latency,
        "host": host,
        "port": port,
        "api_key": api_key,
        "max_concurrent_runs": max_concurrent_runs,
        "default_budget_s": default_budget,
        "max_budget_s": max_budget,
        "out": out,
        "allow_task_files": allow_task_files,
    }
    update = {k: v for k, v in flags.items() if v is not None}
    if default_tools is not None:
        update["default_tools"] = tuple(t.strip() for t in default_tools.split(",") if t.strip())
    if base_url is not None:
        update["policy_options"] = {**base.policy_options, "base_url": base_url}
    try:
        cfg = ServeConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    auth = "bearer token required" if cfg.api_key else "no auth"
    console.print(
        f"agent endpoint on http://{shown}:{cfg.port} · policy {cfg.policy} · tools "
        f"{cfg.tools or 'built-in (' + cfg.tool_latency + ')'} · {auth} · dashboard at / · "
        "docs at /docs",
        soft_wrap=True,
    )
    serve(cfg, dashboard_dirs=dashboard)


Many = list[str] | None  # a repeatable option; each value may also be a comma-separated list


@app.command()
def show(
    path: Annotated[Path, typer.Argument(help="trajectories.jsonl or a run directory.")],
    task: Annotated[
        Many, typer.Option("--task", help="Task id, family (math), glob (math/*) (repeatable).")
    ] = None,
    policy: Annotated[
        Many, typer.Option("--policy", help="Policy label or spec, or a glob (repeatable).")
    ] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeatable).")] = None,
    latency: Annotated[
        Many, typer.Option("--latency", help="Latency spec, glob, or constant seconds (0.2).")
    ] = None,
    budget: Annotated[
        Many, typer.Option("--budget", help="Budget label (30s, 1x) or seconds (repeatable).")
    ] = None,
    outcome: Annotated[
        Many,
        typer.Option(
            "--outcome",
            help="on_time (ok), wrong, late, cut_off, no_answer, failed (repeatable).",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Show at most N episodes.")] = None,
    as_list: Annotated[
        bool, typer.Option("--list", help="One table row per episode instead of traces.")
    ] = False,
) -> None:
    """Print the traces recorded in a run, optionally only the episodes matching filters."""
    from timely.trace import TraceFilter, show_run

    chosen = TraceFilter.build(
        tasks=task, policies=policy, seeds=seed, latencies=latency, budgets=budget, outcomes=outcome
    )
    show_run(path, chosen, console, limit=limit, as_list=as_list)


@app.command("eval")
def eval_cmd(
    overrides: Overrides = None,
    suite: Annotated[
        str, typer.Option(help="A shipped suite (smoke, anytime, standard) or a YAML path.")
    ] = "smoke",
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="Run only these policies (repeatable): a suite policy's label or spec selects "
            "it with its settings; 'suite' = all of the suite's; anything else (SPEC or "
            "SPEC@SPEED) is added.",
        ),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            help="Only these tasks: ids, families or globs (repeatable, a,b); any registered "
            "task, in the suite or not.",
        ),
    ] = None,
    task_option: TaskOptions = None,
    limit: Annotated[
        int | None, typer.Option(help="At most N seeds per cell, for a quick look.")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Play each instance K times (mean, and pass@k for binary tasks)."),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Run directory (default runs/eval-SUITE).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="local (asyncio, this process) or ray (a pool of Ray actors, each holding its "
            "own policies; a private local Ray unless --ray-address is given)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Join this Ray cluster and play there (implies --backend ray): auto (the "
            "cluster `ray start --head` set up on this machine), HOST:PORT or ray://HOST:PORT.",
        ),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Episodes in flight at once.")] = None,
    clock: Annotated[str | None, typer.Option(help="virtual (simulated) or wall (real).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes per cell.")] = None,
    tool_server: Annotated[
        str | None, typer.Option("--tool-server", help="URL of a running tool server.")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="base_url of policies added by --policy.")
    ] = None,
    policy_option: Annotated[
        list[str] | None,
        typer.Option("--policy-option", help="KEY=VALUE option of policies added by --policy."),
    ] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Move an existing run's records aside; start over.")
    ] = False,
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="Skip plots in the run dir.")
    ] = False,
) -> None:
    """Run a Timely-Eval suite (resumable): progress bars, then a summary table."""
    import yaml

    eval_command = load_object(EVAL_COMMAND)

    options: dict[str, object] = {"base_url": base_url} if base_url else {}
    for item in policy_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--policy-option {item!r} must look like KEY=VALUE")
        options[key] = yaml.safe_load(value)
    if ray_address and backend not in (None, "ray"):
        raise typer.BadParameter(f"--ray-address needs --backend ray, not {backend!r}")
    flags = _flag_overrides(
        backend="ray" if ray_address else backend,
        **{"ray.address": ray_address},
        concurrency=concurrency,
        clock=clock,
        episodes=episodes,
        tool_server=tool_server,
        limit=limit,
        epochs=epochs,
    )
    report = eval_command(
        console,
        suite=suite,
        overrides=[*flags, *(overrides or [])],
        tasks=tasks,
        policies=policy,
        policy_options=options,
        task_options=_key_values(task_option, "-T"),
        out=out,
        resume=not no_resume,
        plots=not no_plots,
    )
    if report.failed:
        raise SystemExit(1)


@app.command()
def leaderboard(
    runs: Annotated[list[Path], typer.Argument(help="Run directories made by `timely eval`.")],
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("reports/leaderboard"),
) -> None:
    """Write leaderboard.md, leaderboard.html, results.json and plots from run directories."""
    load_object(LEADERBOARD_COMMAND)(console, runs, out)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="The baseline run (A).")],
    run_b: Annotated[Path, typer.Argument(help="The run to judge against it (B).")],
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default reports/compare-A-vs-B).")
    ] = None,
) -> None:
    """B - A per cell, paired on the episodes both runs played: compare.md, .html and .json."""
    load_object(COMPARE_COMMAND)(console, run_a, run_b, out)


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory (timely eval or timely run).")],
    format: Annotated[
        str, typer.Option("--format", help="parquet | jsonl | hf (a datasets.save_to_disk dir).")
    ] = "parquet",
    out: Annotated[
        Path | None, typer.Option(help="Export directory (default exports/RUN-FORMAT).")
    ] = None,
) -> None:
    """Write a run's episodes (results) and trajectories as tables for pandas / HF datasets."""
    load_object(EXPORT_COMMAND)(console, run, format, out)


@app.command()
def dashboard(
    dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories (trajectories.jsonl), report directories (results.json and "
            "plots from `timely leaderboard`), or folders holding several."
        ),
    ],
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8900,
) -> None:
    """Open runs and reports in the browser: leaderboard, plots, a timeline per episode.

    Serves a local page (no network needed) that re-reads the directories as they grow.
    """
    from timely.serve.dashboard import serve_dashboard

    def announce(url: str) -> None:
        console.print(
            f"dashboard of {', '.join(map(str, dirs))} at {url} (Ctrl-C stops it)", soft_wrap=True
        )

    serve_dashboard(dirs, host=host, port=port, announce=announce)


def main() -> None:
    from timely.heap import fix_heap_threshold

    fix_heap_threshold()  # local models' many-MiB tensors would otherwise leave heap holes
    try:
        app()
    except (TimelyError, ValueError, FileNotFoundError) as exc:
        # Escaped: messages hold brackets ("the [hf] extra", "timely-machine[hf]") that rich
        # would read as markup and drop; not wrapped, so an install line copies whole.
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
