"""The HTTP client of the tool server: one call, its deadline, and what it cost.

:class:`ToolClient` sends the episode's clock kind and remaining budget with every call,
charges what the call cost to the episode clock (the latency the server reported, on a virtual
clock, plus the work the tool reported from its deterministic work model; the measured time, on
a wall clock), turns every tool-level failure into a :class:`~timely.types.ToolResult` the model
can read, and never outlives the deadline. Connections are pooled in :mod:`.transport`, retries
made by :mod:`.retry`, sessions managed through :mod:`.sessions`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any
from urllib.parse import quote

import httpx2

from timely.clock import wall_seconds
from timely.errors import ToolServerUnavailable
from timely.policies.base import Deadline
from timely.toolclient import sessions
from timely.toolclient.protocol import CLOCK_HEADER, DEADLINE_HEADER, IN_PROCESS_URL
from timely.toolclient.results import error_fields, failed, json_body, seconds
from timely.toolclient.retry import Attempts, RetryPolicy, TimedOut
from timely.toolclient.transport import ShardedPool, asgi_transport
from timely.types import ToolResult


class ToolClient:
    """HTTP client of the simulated tool server; implements :class:`ToolBackend`.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8700"``.
        api_key: sent as a bearer token when given (for servers behind a gateway).
        transport: an httpx2 transport to use instead of TCP (see :meth:`in_process`).
        margin_s: extra real seconds a wall-clock call may wait past its deadline for the
            server's own 504 to arrive before it is cut off.
        max_retries: retries after connection failures, while the budget allows.
        backoff_s: the first retry's wait; it doubles up to ``max_backoff_s``.
        max_backoff_s: the longest wait between retries.
        connect_timeout_s: the most one connection attempt may take.
        list_timeout_s: real seconds ``list_tools`` may take (it has no episode deadline).
        max_call_s: the most real seconds a call may wait when its deadline does not bound it
            (an infinite deadline, or a virtual clock whose time does not pass while waiting).
        charge_service_virtual: on a virtual clock, also charge (and record) the server's
            measured ``service_s`` on top of the sampled latency and the reported ``work_s``.
            Off by default: service time is real time and varies by microseconds from run to
            run, so charging it would break "same seed + config + virtual clock => identical
            trajectories". Tools whose work grows with their input (ML fits, sandboxed code)
            report ``work_s`` from a deterministic work model instead, which is always charged
            on a virtual clock (docs/tool-server.md, "Work model").
        max_connections: connections at most (concurrent episodes share one client); the pool
            is split into shards of 32, each request going to the least busy shard.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        margin_s: float = 0.25,
        max_retries: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        list_timeout_s: float = 10.0,
        max_call_s: float = 600.0,
        charge_service_virtual: bool = False,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.margin_s = margin_s
        self.list_timeout_s = list_timeout_s
        self.max_call_s = max_call_s
        self.charge_service_virtual = charge_service_virtual
        self.retry = RetryPolicy(max_retries, backoff_s, max_backoff_s, margin_s, connect_timeout_s)
        self._pool = ShardedPool(
            self.base_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            transport=transport,
            max_connections=max_connections,
            # Every request passes its own timeout; this default only guards misuse.
            default_timeout_s=list_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._tools: list[dict[str, Any]] | None = None

    @classmethod
    def in_process(cls, app: Any, **kwargs: Any) -> ToolClient:
        """A client that calls an ASGI app (``timely_server.app.create_app(...)``) without sockets.

        Args:
            app: the ASGI app.
            **kwargs: as for the constructor.
        """
        return cls(IN_PROCESS_URL, transport=asgi_transport(app), **kwargs)

    async def __aenter__(self) -> ToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._pool.aclose()

    async def list_tools(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` array the server publishes (fetched once, then cached).

        Raises:
            ToolServerUnavailable: the server cannot be reached or answers nonsense.
        """
        if self._tools is None:
            response = await self._admin_request("GET", "/tools", None)
            payload = json_body(response)
            tools = payload.get("tools") if isinstance(payload, dict) else None
            if response.status_code != 200 or not isinstance(tools, list):
                raise self._unavailable(f"GET /tools answered HTTP {response.status_code}")
            self._tools = tools
        return copy.deepcopy(self._tools)

    async def create_session(
        self, session_id: str | None = None, *, ttl_s: float | None = None
    ) -> str:
        """Create a session for a stateful episode and return its id.

        Stateful tasks call this in ``setup`` and :meth:`end_session` in ``teardown``; an id
        that ended before may be created again (with fresh state and streams). Calls naming an
        unseen id also create it implicitly, so stateless tasks need neither.

        Args:
            session_id: the id to use (the server generates one when None).
            ttl_s: idle seconds before the server expires it (server default when None).

        Raises:
            ToolError: the server refused (the id is live, too many sessions).
            ToolServerUnavailable: the server cannot be reached.
        """
        return await sessions.create_session(self._admin_request, session_id, ttl_s)

    async def end_session(self, session_id: str) -> bool:
        """End a session now (its state is closed on the server).

        Returns:
            True if it was live, False if it had already ended, expired or never existed.

        Raises:
            ToolServerUnavailable: the server cannot be reached.
        """
        return await sessions.end_session(self._admin_request, session_id)

    async def _admin_request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> httpx2.Response:
        """A request outside any episode: bounded by ``list_timeout_s`` of real time."""
        end = wall_seconds() + self.list_timeout_s
        try:
            return await self._send(method, path, body, {}, lambda: end - wall_seconds())
        except TimedOut:
            raise self._unavailable(f"no answer within {self.list_timeout_s} s") from None

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        call_id: str,
        session_id: str | None,
        deadline: Deadline,
    ) -> ToolResult:
        """Call tool ``name`` and charge its cost to ``deadline.clock``.

        Args:
            name: the tool (an unknown name comes back as an ``unknown_tool`` result).
            arguments: decoded JSON arguments.
            call_id: the model's tool-call id, copied into the result.
            session_id: the episode id, which selects the server's session (state, latency
                and fault streams).
            deadline: when the call must be done; its clock is charged.

        Returns:
            The result; ``error`` names the failure type when the call failed, ``fault`` the
            injected fault the server reported, ``retries`` how often it was re-sent.

        Raises:
            ToolServerUnavailable: the server could not be reached within the deadline.
        """
        clock = deadline.clock
        remaining = deadline.remaining()
        if remaining <= 0:
            msg = "no time is left in the budget, so the call was not made"
            return failed(call_id, name, "deadline_exceeded", msg)
        bounded = math.isfinite(remaining)
        body = {"arguments": arguments, "session_id": session_id}
        real_end = wall_seconds() + min(deadline.timeout_s(), self.max_call_s)
        attempts = Attempts()

        def headers() -> dict[str, str]:
            out = {CLOCK_HEADER: clock.kind}
            if bounded:  # what is left now: retries before this attempt used some of it
                if clock.kind == "wall":
                    left = deadline.remaining()
                else:
                    left = remaining - attempts.virtual_s
                out[DEADLINE_HEADER] = repr(max(0.0, left))
            return out

        def time_left() -> float:
            # Wall: the episode's own time (plus the margin for the server's 504 to arrive).
            # Virtual: episode time does not pass while we wait, so bound the real wait, and
            # the budget by what failed attempts already cost.
            if clock.kind == "wall" and bounded:
                return deadline.remaining() + self.margin_s
            real = real_end - wall_seconds()
            if bounded:
                return min(real, remaining - attempts.virtual_s + self.margin_s)
            return real

        started = clock.now()
        path = f"/tools/{quote(name, safe='')}"
        try:
            # The clock's cutoff is the backstop: on a wall clock nothing may run much past the
            # deadline, whatever the transport does (it is a no-op on a virtual clock).
            cutoff = clock.cutoff(deadline.at + self.margin_s) if bounded else nullcontext()
            async with cutoff:
                response = await self._send("POST", path, body, headers, time_left, attempts)
            return self._result(response, name, call_id, deadline, started, remaining, attempts)
        except (TimedOut, TimeoutError):
            if clock.kind == "virtual" or not bounded:
                limit = min(deadline.timeout_s(), self.max_call_s)
                raise self._unavailable(
                    f"no answer to {name!r} within {limit:.1f} real seconds",
                    attempts.retries,
                ) from None
            if attempts.last_error is not None and attempts.fault is None:
                raise self._unavailable(attempts.last_error, attempts.retries) from None
            elapsed = clock.now() - started
            clock.charge(elapsed, "tool")
            msg = f"no answer within the {remaining:.3f} s left; the call was abandoned"
            result = failed(call_id, name, "deadline_exceeded", msg, elapsed, attempts.retries)
            return result.model_copy(update={"fault": attempts.fault})
        except ToolServerUnavailable:
            if clock.kind == "wall":
                clock.charge(clock.now() - started, "tool")
            raise

    def _result(
        self,
        response: httpx2.Response,
        name: str,
        call_id: str,
        deadline: Deadline,
        started: float,
        remaining: float,
        attempts: Attempts,
    ) -> ToolResult:
        """Charge the answered call to the clock and turn the answer into a ToolResult."""
        clock = deadline.clock
        payload = json_body(response)
        status = response.status_code
        fault = payload.get("fault") if isinstance(payload, dict) else None
        fault = str(fault) if fault is not None else attempts.fault
        # A 5xx the server explains with an injected fault is an answer; any other 5xx, or a
        # body that is not ours, means the server is broken or something else is answering.
        explained = isinstance(payload, dict) and (status < 500 or status == 504 or fault)
        if not explained:
            raise self._unavailable(
                f"POST /tools/{name} answered HTTP {status} "
                f"{'with a non-JSON body' if not isinstance(payload, dict) else ''}".strip(),
                attempts.retries,
            )
        latency = seconds(payload.get("latency_s"))
        service = seconds(payload.get("service_s"))
        # Modelled work: what a virtual clock charges for the tool's own work (deterministic).
        work = seconds(payload.get("work_s")) if clock.kind == "virtual" and status != 504 else 0.0
        if clock.kind == "virtual" and not self.charge_service_virtual:
            service = 0.0  # not charged, so not recorded: virtual records stay reproducible
        if clock.kind == "wall":
            charged = clock.now() - started
        elif status == 504:
            # The server reports the deadline itself as the latency: exactly what was left.
            charged = attempts.virtual_s + min(latency, max(0.0, remaining - attempts.virtual_s))
        else:
            charged = attempts.virtual_s + latency + work + service
        clock.charge(charged, "tool")
        error = payload.get("error")
        common = {
            "call_id": call_id,
            "name": name,
            "latency_s": latency,
            "service_s": service,
            "work_s": work,
            "charged_s": charged,
            "retries": attempts.retries,
            "fault": fault,
        }
        if status == 200 and error is None:
            result = payload.get("result")
            content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
            return ToolResult(content=content, **common)
        etype, message = error_fields(error, status)
        if status == 504:
            etype = "deadline_exceeded"
        return ToolResult(content=f"Error ({etype}): {message}", error=etype, **common)

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: Callable[[], dict[str, str]] | dict[str, str],
        time_left: Callable[[], float],
        attempts: Attempts | None = None,
    ) -> httpx2.Response:
        """Send with the client's retry policy on its pool (see :meth:`RetryPolicy.send`)."""
        return await self.retry.send(
            self._pool.request,
            method,
            path,
            body,
            headers,
            time_left,
            attempts if attempts is not None else Attempts(),
            self._unavailable,
        )

    def _unavailable(self, why: str, retries: int = 0) -> ToolServerUnavailable:
        tries = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        return ToolServerUnavailable(
            f"tool server at {self.base_url} is unavailable{tries} ({why}). Start it with "
            "`timely tool-server` (or server.app.serve / running_server) and check the URL "
            "and port."
        )
