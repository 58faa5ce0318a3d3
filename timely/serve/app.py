"""The agent endpoint: a FastAPI app that runs the one agent loop per request, under its budget.

Routes (docs/serving.md has examples):

* ``POST /v1/runs`` — a registered task or a conversation; the run summary, Server-Sent Events
  of the loop's step events (``stream: true``), or 202 and the id (``wait: false``).
  ``GET /v1/runs`` (recent runs), ``GET /v1/runs/{id}`` (``?trajectory=true`` adds the full
  record), ``DELETE /v1/runs/{id}``.
* ``POST /v1/chat/completions`` — OpenAI-compatible; the budget is the extra body field
  ``time_budget_s`` (else header ``X-Timely-Budget-S``, else the server default); the agent runs
  its tools server-side and answers with the final message and a ``timely`` timing object.
  ``GET /v1/models``.
* ``GET /health`` (no token needed), ``GET /metrics`` (Prometheus), and the dashboard at ``/``.

Security defaults: the CLI binds 127.0.0.1; with an API key every route but ``/health`` needs
``Authorization: Bearer KEY``; bodies over ``max_body_bytes`` get 413; more than
``max_concurrent_runs`` runs get 429 with ``Retry-After``; bad input gets a 4xx JSON error; task
options that name files on the server get 403 unless ``allow_task_files`` (task_files.py).
A client that disconnects cancels its run, which ends the run's tool session.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from timely import asgi
from timely.budget import Budget
from timely.errors import RegistryError, TaskError, ToolServerUnavailable
from timely.policies.base import Policy, bind_policy
from timely.rollout import Runtime
from timely.runrecord import write_run_record
from timely.serve.chat_task import ChatTask
from timely.serve.config import ServeConfig
from timely.serve.errors import (
    ServeError,
    error_response,
    error_responses,
    install_error_handlers,
    validation_message,
)
from timely.serve.metrics import ServeMetrics
from timely.serve.openapi import METRICS_RESPONSES, chat_docs, document_auth, run_docs
from timely.serve.runs import Run, RunManager, wait_for_run
from timely.serve.schemas import (
    ChatMessage,
    ChatRequest,
    Health,
    ModelList,
    RunDetail,
    RunList,
    RunRequest,
    RunSummary,
)
from timely.serve.task_files import build_error, file_options
from timely.task import TASKS, Task, make_task
from timely.toolclient import ToolBackend
from timely.types import EndReason, Message

log = logging.getLogger("timely.serve")

BUDGET_HEADER = "x-timely-budget-s"
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
OPEN_PATHS = frozenset({"/health"})
# With no event for this long a stream sends an SSE comment: proxies keep the connection and a
# client that went away is noticed (the write fails) within this time.
KEEPALIVE_S = 5.0
M = TypeVar("M", bound=BaseModel)


class _Services:
    """The policy and the tool backend, started once (at startup, or by the first request).

    ``close`` forgets what it built, so a lifespan that runs again (an app embedded in another,
    test clients that each run it) starts anew instead of reusing a closed tool client.
    """

    def __init__(
        self, config: ServeConfig, policy: Policy | None, tools: ToolBackend | None
    ) -> None:
        self.config = config
        self._given = (policy, tools)
        self._lock = asyncio.Lock()
        self.metrics = ServeMetrics()
        self._reset()

    def _reset(self) -> None:
        self.policy, self.tools = self._given
        # What the endpoint builds itself (policy, tool backend) comes from a runtime it owns.
        self._runtime = Runtime(tool_server=self.config.tools)
        self._served: dict[str, dict[str, Any]] | None = None
        self.manager: RunManager | None = None

    async def ready(self) -> RunManager:
        if self.manager is not None:
            return self.manager
        async with self._lock:
            if self.manager is None:
                if self.policy is None:
                    options = dict(self.config.policy_options)
                    if self.config.max_new_tokens:
                        options.setdefault("max_new_tokens", self.config.max_new_tokens)
                    self.policy = await self._runtime.policy(self.config.policy, options)
                if self.tools is None:
                    self.tools = await self._runtime.tools(self.config.tool_latency)
                if self.config.out:
                    write_run_record(self.config.out, _recorded(self.config), seeds=[])
                if (why := _cannot_chat(self.policy)) is not None:
                    log.warning(
                        "policy %s cannot answer conversations (%s): chat requests get 400 "
                        "unsupported_by_policy; POST /v1/runs with a registered task works",
                        self.policy.name,
                        why,
                    )
                self.manager = RunManager(self.policy, self.tools, self.config, self.metrics)
        return self.manager

    async def served_tools(self) -> dict[str, dict[str, Any]]:
        """Name -> schema of every tool the tool server serves (listed once, then cached)."""
        if self._served is None:
            assert self.tools is not None
            try:
                listed = await self.tools.list_tools()
            except ToolServerUnavailable as exc:
                raise ServeError(503, "tools_unavailable", f"{exc}") from None
            self._served = {t["function"]["name"]: t for t in listed}
        return self._served

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()
        await self._runtime.aclose()  # the tool client and the policy it built, not given ones
        self._reset()


def _cannot_chat(policy: Policy) -> str | None:
    """Why ``policy`` cannot play a conversation (a scripted policy replays a task's reference
    solution, which a chat has not), or None when it can."""
    probe = ChatTask([Message(role="user", content="hi")], (), 1, 1.0)
    try:
        bind_policy(policy, probe)
    except TaskError as exc:
        return str(exc)
    return None


def _recorded(config: ServeConfig) -> ServeConfig:
    """The config as written to the run directory: never the API key."""
    return config.model_copy(update={"api_key": "<set>" if config.api_key else None})


def create_app(
    config: ServeConfig | None = None,
    *,
    policy: Policy | None = None,
    tools: ToolBackend | None = None,
    dashboard_dirs: list[Path] | None = None,
) -> FastAPI:
    """The agent endpoint app.

    Args:
        config: server settings (defaults: see :class:`ServeConfig`).
        policy: a ready policy (tests, embedding); None: built from ``config.policy`` at start.
        tools: a ready tool backend; None: a client of ``config.tools`` (or in-process tools).
        dashboard_dirs: run or report directories the dashboard at ``/`` shows, besides
            ``config.out``.
    """
    config = config or ServeConfig()
    services = _Services(config, policy, tools)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.ready()  # load the model before the first request, not during it
        yield
        await services.close()

    app = FastAPI(
        title="Timely Machine agent endpoint",
        version="1",
        description="A time-aware agent behind an HTTP API: every request carries a time budget.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    limit = config.max_body_bytes

    async def body(request: Request, model: type[M]) -> M:
        try:
            raw = await asgi.read_body(request, limit)
            data = asgi.decode_json(raw)
        except asgi.BodyTooLarge:
            services.metrics.rejected.labels("body_too_large").inc()
            raise ServeError(
                413, "body_too_large", f"request body exceeds {limit} bytes (max_body_bytes)"
            ) from None
        except (asgi.BadContentLength, asgi.InvalidJSON) as exc:
            raise ServeError(400, "invalid_json", str(exc)) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc.errors())
            raise ServeError(422, "invalid_request", message, param=param) from None

    def checked_budget(seconds: float, name: str) -> float:
        if not (math.isfinite(seconds) and 0 < seconds <= config.max_budget_s):
            raise ServeError(
                422,
                "invalid_request",
                f"{name} must be > 0 and <= {config.max_budget_s:g} (this server's "
                f"max_budget_s), got {seconds:g}",
                param=name,
            )
        return seconds

    def budget_of(request: Request, asked: float | None, default: float) -> Budget:
        """The body's budget, else the header's, else ``default``; a header that is sent is
        checked even when the body overrides it (a malformed header is a client bug)."""
        header: float | None = None
        if BUDGET_HEADER in request.headers:
            raw = request.headers[BUDGET_HEADER]
            if _DECIMAL.fullmatch(raw.strip()) is None:  # float() also takes "1_0", "nan"
                raise ServeError(
                    400,
                    "invalid_request",
                    f"X-Timely-Budget-S must be a number of seconds such as 30, got {raw!r}",
                    param="X-Timely-Budget-S",
                )
            header = checked_budget(float(raw), "X-Timely-Budget-S")
        seconds = asked if asked is not None else header
        return Budget(
            seconds=checked_budget(default if seconds is None else seconds, "time_budget_s")
        )

    def playable(manager: RunManager, task: Task, param: str) -> None:
        """400 now, before a run starts, if the served policy cannot play ``task``."""
        try:
            bind_policy(manager.policy, task)
        except TaskError as exc:
            raise ServeError(
                400,
                "unsupported_by_policy",
                f"the served policy {manager.policy.name!r} cannot play this request: {exc}",
                param=param,
            ) from None

    async def chat_task(
        messages: list[ChatMessage], names: list[str] | None, budget: Budget, max_turns: int | None
    ) -> ChatTask:
        served = await services.served_tools()
        wanted = list(config.default_tools) if names is None else names
        unknown = [n for n in wanted if n not in served]
        if unknown:
            raise ServeError(
                400,
                "unknown_tool",
                f"the tool server does not serve {unknown}; it serves {sorted(served)}",
                param="tools",
            )
        try:
            return ChatTask(
                [m.to_message() for m in messages],
                tuple(dict.fromkeys(wanted)),
                max_turns or config.max_turns,
                budget.seconds,
            )
        except (TaskError, ValueError) as exc:
            raise ServeError(422, "invalid_request", str(exc), param="messages") from None

    async def registered_task(req: RunRequest) -> Task:
        assert req.task is not None
        try:
            family = TASKS.get(req.task)
        except RegistryError as exc:
            raise ServeError(404, "unknown_task", str(exc), param="task") from None
        # Before anything is built: a refused option must not touch the disk.
        named = file_options(req.task, family, req.task_options, config.allow_task_files)
        # An OSError is the client's only when it named the file (else it is the server's).
        client_errors = (TaskError, ValueError, OSError) if named else (TaskError, ValueError)
        try:
            task = make_task(
                req.task,
                seed=req.seed,
                split=req.split,
                difficulty=req.difficulty,
                **req.task_options,
            )
        except client_errors as exc:
            message = build_error(req.task, exc, named)
            raise ServeError(422, "invalid_request", message, param="task_options") from None
        served = await services.served_tools() if task.spec.tools else {}
        missing = [n for n in task.spec.tools if n not in served]
        if missing:
            raise ServeError(
                400, "unknown_tool", f"task {task.id} needs tools {missing} the tool server lacks"
            )
        return task

    # -- native API -----------------------------------------------------------------------------
    @app.post("/v1/runs", tags=["runs"], status_code=200, **run_docs(config))
    async def create_run(request: Request) -> Response:
        """Run a task or a conversation under ``time_budget_s``."""
        manager = await services.ready()
        req = await body(request, RunRequest)
        if req.task is not None:
            task = await registered_task(req)
            budget = budget_of(request, req.time_budget_s, task.spec.default_budget_s)
        else:
            assert req.messages is not None
            budget = budget_of(request, req.time_budget_s, config.default_budget_s)
            task = await chat_task(req.messages, req.tools, budget, req.max_turns)
        playable(manager, task, "task")
        run = manager.start("runs", task, budget, max_turns=req.max_turns)
        if not req.wait:
            return JSONResponse(
                run.summary().model_dump(mode="json"),
                status_code=202,
                headers={"Location": f"/v1/runs/{run.id}"},
            )
        if req.stream:
            return RunStream(_run_events(run), on_close=_cancel_unless_done(manager, run))
        await _wait_or_cancel(manager, run, request.receive)
        return JSONResponse(run.summary().model_dump(mode="json"))

    @app.get("/v1/runs", tags=["runs"], response_model=RunList, responses=error_responses(422))
    async def list_runs(limit: int = 50) -> dict[str, Any]:
        """The most recent runs, newest first (``limit`` at most 1000)."""
        manager = await services.ready()
        recent = list(manager.runs.values())[::-1][: max(1, min(limit, 1000))]
        return {"object": "list", "data": [r.summary().model_dump(mode="json") for r in recent]}

    @app.get(
        "/v1/runs/{run_id}",
        tags=["runs"],
        response_model=RunDetail,
        responses=error_responses(404, 422),
    )
    async def get_run(run_id: str, trajectory: bool = False) -> dict[str, Any]:
        """A run's summary (``?trajectory=true``: with its full record, once it has ended)."""
        run = (await services.ready()).get(run_id)
        out = run.summary().model_dump(mode="json")
        if trajectory and run.trajectory is not None:
            out["trajectory"] = run.trajectory.model_dump(mode="json")
        return out

    @app.delete(
        "/v1/runs/{run_id}",
        tags=["runs"],
        response_model=RunSummary,
        responses=error_responses(404, 422),
    )
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Cancel a run (its tool session is ended); a finished run is returned as it is."""
        manager = await services.ready()
        run = manager.get(run_id)
        manager.cancel(run)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await run.done.wait()
        return run.summary().model_dump(mode="json")

    # -- OpenAI-compatible API ------------------------------------------------------------------
    @app.get("/v1/models", tags=["openai"], response_model=ModelList)
    async def models() -> dict[str, Any]:
        """The one model this server serves (as ``id``; its bare name is accepted too)."""
        return {
            "object": "list",
            "data": [{"id": config.policy, "object": "model", "created": 0, "owned_by": "timely"}],
        }

    @app.post("/v1/chat/completions", tags=["openai"], **chat_docs(config))
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions; the agent runs its tool loop server-side."""
        manager = await services.ready()
        req = await body(request, ChatRequest)
        if req.model not in config.model_ids:
            raise ServeError(
                404,
                "model_not_found",
                f"model {req.model!r} is not served here; this server serves {config.policy!r} "
                "(GET /v1/models)",
                param="model",
            )
        budget = budget_of(request, req.time_budget_s, config.default_budget_s)
        try:
            names = req.tool_names()
        except ValueError as exc:
            raise ServeError(422, "invalid_request", str(exc), param="tools") from None
        task = await chat_task(req.messages, names, budget, req.max_turns)
        playable(manager, task, "messages")
        run = manager.start("chat", task, budget, max_turns=req.max_turns)
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return RunStream(
                _chat_chunks(run, req.model, usage), on_close=_cancel_unless_done(manager, run)
            )
        await _wait_or_cancel(manager, run, request.receive)
        return JSONResponse(_chat_completion(run, req.model))

    # -- operations -----------------------------------------------------------------------------
    @app.get("/health", tags=["ops"], response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness (never needs a token)."""
        manager = services.manager
        return {
            "status": "ok" if manager is not None else "starting",
            "policy": config.policy,
            "in_flight": manager.in_flight if manager else 0,
        }

    @app.get("/metrics", tags=["ops"], responses=METRICS_RESPONSES)
    async def metrics() -> Response:
        """Prometheus metrics (``timely_*``)."""
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _mount_dashboard(app, [*(dashboard_dirs or []), *([Path(config.out)] if config.out else [])])
    if config.api_key:
        app.add_middleware(_BearerAuth, token=config.api_key)
        document_auth(app, OPEN_PATHS)
    # Outermost, so early answers (401, 413) are drained too and reach the client intact.
    app.add_middleware(asgi.DrainUnreadBodyMiddleware, max_bytes=4 * limit)
    return app


def _mount_dashboard(app: FastAPI, dirs: list[Path]) -> None:
    if importlib.util.find_spec("timely.serve.dashboard") is None:
        return
    from timely.serve.dashboard import dashboard_router

    app.include_router(dashboard_router(dirs))


def serve(config: ServeConfig, *, dashboard_dirs: list[Path] | None = None) -> None:
    """Run the agent endpoint in the foreground until interrupted (``timely serve``)."""
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("agent endpoint binds %s: it is reachable from other machines", config.host)
        if config.api_key is None:
            log.warning("no api key: anyone who can reach %s may run the agent", config.host)
    if config.allow_task_files:
        log.warning(
            "allow_task_files: every client may make this server read any file it can read "
            "(task_options such as math/jsonl path=, ml/dir path=)"
        )
    app = create_app(config, dashboard_dirs=dashboard_dirs)
    uvicorn.run(
        app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5
    )


# -- run plumbing -----------------------------------------------------------------------------
async def _wait_or_cancel(manager: RunManager, run: Run, receive: Receive) -> None:
    """Wait for the run; a client that goes away first cancels it."""
    if await wait_for_run(run, receive):
        log.info("client of %s disconnected: cancelling the run", run.id)
        manager.cancel(run)
        await run.done.wait()


def _cancel_unless_done(manager: RunManager, run: Run) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if not run.done.is_set():
            log.info("stream of %s closed early: cancelling the run", run.id)
            manager.cancel(run)
            await run.done.wait()

    return close


class RunStream(StreamingResponse):
    """An SSE response that watches the client the whole time and runs ``on_close`` at the end.

    Starlette only notices a disconnect through a failed write under newer ASGI servers; a run
    must stop as soon as its client is gone, even while a tool call is in flight, so this
    response always listens for ``http.disconnect`` beside streaming.
    """

    def __init__(
        self, content: AsyncIterator[bytes], *, on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            _with_keepalive(content),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()


async def _with_keepalive(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``content``, with an SSE comment whenever it is silent for KEEPALIVE_S."""
    iterator = aiter(content)
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield KEEPALIVE_COMMENT
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()


def _sse(data: Any, event: str | None = None) -> bytes:
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")), event=event)


async def _run_events(run: Run) -> AsyncIterator[bytes]:
    """``/v1/runs`` streaming: ``run``, each step event (named by its type), then ``summary``."""
    yield _sse({"id": run.id, "budget_s": run.budget.seconds}, "run")
    async for event in run.stream():
        yield _sse(event, event["type"])
    await run.done.wait()
    yield _sse(run.summary().model_dump(mode="json"), "summary")


def _finish_reason(run: Run) -> str:
    traj = run.trajectory
    if traj is not None and traj.end_reason == EndReason.ANSWERED:
        return "stop"
    return "length"  # cut off by the budget or the turn limit: no answer


def _usage(run: Run) -> dict[str, int]:
    summary = run.summary()
    prompt, completion = summary.prompt_tokens or 0, summary.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _raise_if_failed(run: Run) -> None:
    """A run the model or the tool server failed is a 502, a crashed run a 500."""
    traj = run.trajectory
    if run.status == "failed" and traj is None:
        raise ServeError(500, "internal_error", run.error or "the run failed")
    if traj is not None and traj.end_reason in (
        EndReason.POLICY_ERROR,
        EndReason.TOOL_SERVER_ERROR,
    ):
        raise ServeError(502, "upstream_error", f"the run failed: {traj.error}")


def _chat_completion(run: Run, model: str) -> dict[str, Any]:
    _raise_if_failed(run)
    answer = run.trajectory.final_answer if run.trajectory else None
    return {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion",
        "created": run.created_unix,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer or ""},
                "finish_reason": _finish_reason(run),
            }
        ],
        "usage": _usage(run),
        "timely": run.summary().model_dump(mode="json"),
    }


async def _chat_chunks(run: Run, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """Chat streaming: a role chunk, step events as choice-less chunks, the answer, [DONE].

    Step events ride in an extra ``timely_event`` field of chunks with no choices, which the
    official client parses and ignores (read them as ``chunk.model_extra["timely_event"]``).
    """
    head = {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion.chunk",
        "created": run.created_unix,
        "model": model,
    }

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return _sse({**head, "choices": choices, **extra})

    yield chunk({"role": "assistant", "content": ""})
    async for event in run.stream():
        yield chunk(None, timely_event=event)
    await run.done.wait()
    try:
        _raise_if_failed(run)
    except ServeError as exc:  # the status line is long gone: the error is the last event
        yield _sse({"error": {"message": exc.message, "type": exc.kind, "code": exc.kind}})
        yield b"data: [DONE]\n\n"
        return
    answer = run.trajectory.final_answer if run.trajectory else None
    if answer:
        yield chunk({"content": answer})
    yield chunk({}, _finish_reason(run), timely=run.summary().model_dump(mode="json"))
    if include_usage:
        yield _sse({**head, "choices": [], "usage": _usage(run)})
    yield b"data: [DONE]\n\n"


class _BearerAuth:
    """401 unless ``Authorization: Bearer <token>``; ``/health`` is open."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.tokens = app, [token.encode()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in OPEN_PATHS
            or asgi.bearer_ok(scope, self.tokens)
        ):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "this server needs 'Authorization: Bearer <api key>' (the key it was started with: "
            "--api-key or TIMELY_SERVE_API_KEY); the openai client sends it as api_key=...",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
