"""The shared tool-execution layer: one call, with latency, faults, deadline and accounting.

Both façades (plain HTTP and MCP) run every call through :meth:`ToolServer.execute`, so they
inject identical delays from identical streams, fault alike and keep the same deadline rules.
A call takes ``service`` (the handler's own work) plus a ``latency`` drawn from the tool's
latency model. In wall mode the server really waits; in virtual mode it only reports the
latency, which the client charges to its simulated clock, together with the ``work`` the tool
reported from its deterministic work model (:class:`timely_tools.base.WorkMeter`; real service time
varies run to run, so it is not what a virtual clock charges). A caller's deadline is honoured
to the letter: a call that cannot finish in time is answered 504 at the deadline, never later.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import best_match

from timely.clock import WallClock, wall_seconds
from timely.errors import ConfigError, RegistryError
from timely.rng import make_rng
from timely_server.config import ServerConfig
from timely_server.errors import ApiError
from timely_server.fastcheck import FastCheck, compile_check
from timely_server.faults import Fault, FaultConfig, FaultSpec
from timely_server.latency import LatencyConfig
from timely_server.metrics import OTHER_TOOL, Metrics
from timely_server.registry import ToolDef, ToolRegistry, default_registry
from timely_server.sessions import Session, SessionStore
from timely_server.waits import Wait, wait_until
from timely_tools.base import ToolContext, ToolInputError

log = logging.getLogger("timely.server")

_WALL = WallClock()
# A result's JSON as the HTTP answer carries it (Starlette's settings), one encoder for all calls.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class ClientGone(Exception):
    """The client disconnected while the server was waiting out a latency; nobody to answer."""


@dataclass
class CallOutcome:
    """How one call ended: the HTTP status and body, and what the façades and metrics need."""

    tool: str
    status: int
    body: dict[str, Any]
    latency_s: float = 0.0
    service_s: float = 0.0
    fault: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    work_s: float = 0.0
    # ``body["result"]`` as compact JSON, encoded once when the result was checked, so the HTTP
    # façade need not encode it again (results can be large: game screens, program output).
    result_json: str | None = None

    @property
    def error_type(self) -> str | None:
        error = self.body.get("error")
        return error.get("type") if isinstance(error, dict) else None


class ToolServer:
    """The server's state: tools, latency and fault settings, sessions, limits and metrics.

    Args:
        config: the server settings.
        registry: the tools to serve (the built-ins when None).

    Raises:
        timely.errors.ConfigError: ``per_tool_latency`` or ``per_tool_faults`` names a tool the
            registry lacks (profile entries for unknown tools are only logged).
    """

    def __init__(self, config: ServerConfig, registry: ToolRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else default_registry()
        for what, names in (
            ("per_tool_latency", config.per_tool_latency),
            ("per_tool_faults", config.per_tool_faults),
        ):
            for name in names:
                self._check_tool_name(name, what)
        known = set(self.registry.names())
        ignored = sorted(set(config.profile_per_tool_latency) - known)
        if ignored:
            log.warning(
                "latency profile %s: no tools named %s here; those entries are ignored",
                config.latency_profile or "(custom)",
                ", ".join(ignored),
            )
        self.latency: LatencyConfig = config.latency_config(known)
        self.faults: FaultConfig = config.fault_config()
        self.metrics = Metrics(lambda: self.sessions.live)
        self.sessions = SessionStore(
            seed=config.seed,
            ttl_s=config.session_ttl_s,
            max_live=config.max_live_sessions,
            remember_ended=config.remember_ended_sessions,
            sweep_s=config.session_sweep_s,
            on_event=self.metrics.session_event,
        )
        self._latency_rng = make_rng(config.seed, "latency")
        self._fault_rng = make_rng(config.seed, "faults")
        self.in_flight = 0
        self._fast_checks: dict[str, tuple[ToolDef, FastCheck | None]] = {}

    # -- lookups -------------------------------------------------------------------------------
    def _check_tool_name(self, name: str, what: str) -> None:
        try:
            self.registry.get(name)
        except RegistryError as exc:
            raise ConfigError(f"{what}: {exc}") from None

    def tool(self, name: str) -> ToolDef:
        """The tool called ``name``.

        Raises:
            ApiError: 404 ``unknown_tool`` (the message suggests close names).
        """
        try:
            return self.registry.get(name)
        except RegistryError as exc:
            raise ApiError(404, "unknown_tool", str(exc)) from None

    def label(self, name: str) -> str:
        """``name`` if it is a registered tool, else a fixed label (bounded metric series)."""
        return name if name in self.registry else OTHER_TOOL

    def check_arguments(self, tooldef: ToolDef, arguments: dict[str, Any]) -> None:
        """Validate arguments against the tool's JSON Schema.

        Raises:
            ApiError: 422 ``invalid_arguments`` naming the failing JSON path.
        """
        cached = self._fast_checks.get(tooldef.name)
        if cached is None or cached[0] is not tooldef:
            cached = self._fast_checks[tooldef.name] = (tooldef, compile_check(tooldef.parameters))
        fast = cached[1]
        if fast is not None and fast(arguments):
            return
        error = best_match(tooldef.validator.iter_errors(arguments))
        if error is not None:
            raise ApiError(
                422,
                "invalid_arguments",
                f"invalid arguments for tool {tooldef.name!r} at {error.json_path}: "
                f"{error.message}",
            )

    # -- run-time settings (admin) -------------------------------------------------------------
    def set_latency(self, latency: LatencyConfig) -> None:
        """Replace the latency settings; later calls use them.

        Raises:
            ConfigError: an override names an unknown tool.
        """
        for name in latency.per_tool:
            self._check_tool_name(name, "per_tool")
        self.latency = latency

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the fault settings; later calls use them.

        Raises:
            ConfigError: an override names an unknown tool.
        """
        for name in faults.per_tool:
            self._check_tool_name(name, "per_tool")
        self.faults = faults

    # -- one call ------------------------------------------------------------------------------
    async def execute(
        self,
        tooldef: ToolDef,
        arguments: dict[str, Any],
        session_id: str | None,
        *,
        virtual: bool,
        deadline_s: float | None,
        transport: str = "http",
        wait: Wait | None = None,
        started: float | None = None,
    ) -> CallOutcome:
        """Run one validated call and account for it.

        Args:
            tooldef: the tool.
            arguments: arguments already checked against its schema.
            session_id: the episode's session (created on first use), or None.
            virtual: report the latency instead of waiting it.
            deadline_s: seconds the caller has left, or None.
            transport: "http" or "mcp", for metrics.
            wait: how to wait in wall mode (a façade passes one that stops when the client
                goes away); a plain sleep when None.
            started: ``wall_seconds()`` when the request arrived (now when None). A call is
                answered ``service + latency`` after it, so the server's own request handling
                is absorbed by the injected wait instead of adding to it.

        Raises:
            ApiError: 429 ``overloaded``; 410/429 from the session store.
            asyncio.CancelledError: the client went away; the wait was abandoned.
        """
        if self.in_flight >= self.config.max_concurrency:
            raise ApiError(
                429,
                "overloaded",
                f"{self.config.max_concurrency} calls are in flight (max_concurrency); retry "
                "after the Retry-After seconds",
                headers={"Retry-After": "1"},
            )
        name = tooldef.name
        m = self.metrics
        gauge = m.child("in_flight", name)
        self.in_flight += 1
        gauge.inc()
        t0 = started if started is not None else wall_seconds()
        session: Session | None = None
        try:
            if session_id is not None:
                session = self.sessions.acquire(session_id)
            else:
                self.sessions.maybe_sweep()
            outcome = await self._run(
                tooldef, arguments, session, virtual, deadline_s, t0, wait or _WALL.sleep
            )
        except BaseException as exc:
            if isinstance(exc, ClientGone) or not isinstance(exc, Exception):  # cancelled
                m.child("cancelled", name, transport).inc()
            raise
        finally:
            if session is not None:
                self.sessions.release(session)
            self.in_flight -= 1
            gauge.dec()
        m.child("requests", name, str(outcome.status), transport).inc()
        m.child("injected", name).observe(outcome.latency_s)
        m.child("service", name).observe(outcome.service_s)
        if virtual:
            m.child("work", name).observe(outcome.work_s)
        m.child("duration", name).observe(wall_seconds() - t0)
        if outcome.fault is not None:
            m.child("faults", name, outcome.fault).inc()
        return outcome

    async def _run(
        self,
        tooldef: ToolDef,
        arguments: dict[str, Any],
        session: Session | None,
        virtual: bool,
        deadline_s: float | None,
        t0: float,
        wait: Wait,
    ) -> CallOutcome:
        name = tooldef.name
        model = self.latency.model_for(name, self.registry.default_latency(tooldef))
        latency = model.sample(session.latency_rng if session else self._latency_rng)
        fault: Fault | None = None
        spec: FaultSpec = self.faults.spec_for(name)
        if self.faults.enabled:  # one draw per call on every tool, so streams stay aligned
            fault = spec.draw(session.fault_rng if session else self._fault_rng)
        if fault is Fault.HTTP_5XX:
            message = (
                f"injected fault: the tool server failed before running {name!r}; the call had "
                "no effect and may be retried"
            )
            body = _error_body("injected_fault", message, fault, 0.0, 0.0)
            return CallOutcome(name, 503, body, fault=fault.value, headers={"Retry-After": "0"})
        if fault is Fault.HANG:
            held = self.config.hang_timeout_s if deadline_s is None else max(0.0, deadline_s)
            if not virtual:
                await wait_until(t0 + held, wait)
            message = f"tool {name!r} did not answer (injected hang) within {held:.3f} s"
            body = _error_body("deadline_exceeded", message, fault, held, 0.0)
            return CallOutcome(name, 504, body, held, 0.0, fault.value)
        if fault is Fault.SLOW_FIRST_BYTE:
            latency += spec.slow_first_byte_s
        tag = fault.value if fault is not None else None
        if deadline_s is not None and latency > deadline_s:
            # The answer could never arrive in time: don't run the tool for nothing.
            why = f"its latency of {latency:.3f} s exceeds the {max(deadline_s, 0):.3f} s left"
            return await self._expired(name, t0, deadline_s, 0.0, why, virtual, tag, wait)
        work = 0.0
        if fault is Fault.ERROR:
            message = f"tool {name!r} failed: injected fault (a simulated tool failure)"
            result, error, timed_out, service = None, _err("tool_error", message), False, 0.0
            result_json = "null"
        else:
            # Virtual time does not pass while a tool works, and its real work is not charged:
            # cutting it at the virtual deadline would make a replay depend on how loaded the
            # machine is, so a real-time cap stops a runaway handler instead.
            if virtual:
                work_left: float | None = self.config.virtual_work_cap_s
            else:
                work_left = None if deadline_s is None else deadline_s - latency
            ctx = ToolContext(
                tool=name,
                session_id=session.id if session else None,
                seed=self.config.seed,
                clock="virtual" if virtual else "wall",
                state=session.state if session else None,
                deadline_s=work_left,
            )
            result, result_json, error, timed_out, service = await _run_handler(
                tooldef, arguments, ctx, work_left
            )
            if virtual:  # on a wall clock the work is in the measured time already
                work = ctx.work.seconds * self.config.work_scale
        if timed_out:
            why = "the tool's own work did not finish in time"
            if virtual:
                why += f" (the {self.config.virtual_work_cap_s:g} s cap on real work)"
            return await self._expired(
                name, t0, deadline_s or 0.0, service, why, virtual, tag, wait
            )
        spent = work if virtual else service  # what the caller's clock pays besides latency
        if deadline_s is not None and spent + latency > deadline_s:
            why = (
                f"{'work' if virtual else 'service'} {spent:.3f} s + latency {latency:.3f} s "
                f"exceeds the {deadline_s:.3f} s left"
            )
            return await self._expired(name, t0, deadline_s, service, why, virtual, tag, wait)
        if not virtual and latency > 0:
            await wait_until(t0 + service + latency, wait)
        body = {
            "result": result,
            "latency_s": latency,
            "service_s": service,
            "work_s": work,
            "error": error,
            "fault": tag,
        }
        return CallOutcome(
            name, 200, body, latency, service, tag, work_s=work, result_json=result_json
        )

    async def _expired(
        self,
        name: str,
        t0: float,
        deadline_s: float,
        service: float,
        why: str,
        virtual: bool,
        fault: str | None,
        wait: Wait,
    ) -> CallOutcome:
        deadline_s = max(0.0, deadline_s)
        if not virtual:
            await wait_until(t0 + deadline_s, wait)
        message = (
            f"tool {name!r} could not answer before the deadline: {why}. The call was "
            "abandoned; the time until the deadline was spent."
        )
        body = _error_body("deadline_exceeded", message, fault, deadline_s, service)
        return CallOutcome(name, 504, body, deadline_s, service, fault)


def _err(type: str, message: str) -> dict[str, str]:
    return {"type": type, "message": message}


def _error_body(
    type: str, message: str, fault: str | None, latency: float, service: float
) -> dict[str, Any]:
    return {
        "error": _err(type, message),
        "fault": fault,
        "latency_s": latency,
        "service_s": service,
    }


async def _run_handler(
    tooldef: ToolDef, arguments: dict[str, Any], ctx: ToolContext, work_left: float | None
) -> tuple[Any, str, dict[str, str] | None, bool, float]:
    """Run a handler: (result, result as JSON, error, timed_out, service seconds).

    Never raises for tool faults. The result is encoded here, once: that is the check that it can
    be sent (no NaN, no unpaired surrogates), and the HTTP façade sends these bytes.
    """
    t0 = wall_seconds()
    result: Any = None
    encoded = "null"
    error: dict[str, str] | None = None
    cutoff = (
        contextlib.nullcontext() if work_left is None else _WALL.cutoff(_WALL.now() + work_left)
    )
    try:
        async with cutoff:
            try:
                result = tooldef.handler(arguments, ctx)
                if inspect.isawaitable(result):
                    result = await result
                # Fail here, not while sending: no NaN, no unpaired surrogates.
                encoded = _JSON.encode(result)
                encoded.encode("utf-8")
            except ToolInputError as exc:
                result, encoded, error = None, "null", _err("tool_input_error", str(exc))
            except Exception as exc:  # noqa: BLE001 - a crashing tool is an observation, not a 500
                log.exception("tool %r crashed", tooldef.name)
                message = f"tool {tooldef.name!r} failed: {type(exc).__name__}: {exc}"
                result, encoded, error = None, "null", _err("tool_error", message)
    except TimeoutError:
        return None, "null", None, True, wall_seconds() - t0
    return result, encoded, error, False, wall_seconds() - t0
