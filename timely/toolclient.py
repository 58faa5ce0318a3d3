"""Tool backends as the agent loop sees them, and the HTTP client of the tool server.

The loop calls tools through :class:`ToolBackend` and never thinks about HTTP, retries or time
accounting: :class:`ToolClient` sends the episode's clock kind and remaining budget with every
call, charges what the call cost to the episode clock (the latency the server reported, on a
virtual clock, plus the work the tool reported from its deterministic work model; the measured
time, on a wall clock), turns every tool-level failure into a
:class:`~timely.types.ToolResult` the model can read, and never outlives the deadline.
``ToolClient.in_process(app)`` drives the same code over ASGI, with no sockets, for tests.

Retries are for transport failures only (no connection, a dropped connection, HTTP 502/503,
and 429 "try later"), and only while the remaining budget still has room for the wait and a
real attempt; every retry and every injected fault the server reported is recorded in the
ToolResult (``retries``, ``fault``), so the trajectory shows what the time went on.
"""

from __future__ import annotations

import copy
import json
import math
import ssl
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx2

from timely.clock import WallClock, wall_seconds
from timely.errors import ToolError, ToolServerUnavailable
from timely.policies.base import Deadline
from timely.types import ToolResult

CLOCK_HEADER = "X-Timely-Clock"
DEADLINE_HEADER = "X-Timely-Deadline-S"
IN_PROCESS_URL = "http://tool-server.in-process"

# Retry backoff waits in real time whatever the episode clock is: it waits for a real server.
_REAL = WallClock()
_RETRY_STATUS = (429, 502, 503)
_SHARD_SIZE = 32  # connections per pooled client (see ToolClient.__init__)


@runtime_checkable
class ToolBackend(Protocol):
    """What ``run_episode`` needs from tools.

    ``call`` never raises for a tool-level problem (unknown tool, invalid arguments, the tool
    failed, the deadline passed): it returns a ToolResult whose ``error`` says what happened, and it
    has already charged the time the call cost to ``deadline.clock``. It raises
    ``ToolServerUnavailable`` only when the server cannot be reached within the deadline.
    """

    async def list_tools(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` array of every tool the backend serves."""
        ...

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        call_id: str,
        session_id: str | None,
        deadline: Deadline,
    ) -> ToolResult: ...


class _TimedOut(Exception):
    """The request was sent but no answer came within its time."""


@dataclass
class _Attempts:
    retries: int = 0
    last_error: str | None = None
    # Virtual clock: seconds the failed attempts and the waits between them cost (their reported
    # latency plus the backoff), charged with the final answer so retries are not free.
    virtual_s: float = 0.0
    fault: str | None = None  # the last injected fault a failed attempt reported


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
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.list_timeout_s = list_timeout_s
        self.max_call_s = max_call_s
        self.charge_service_virtual = charge_service_virtual
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpcore scans its whole pool on every request, which costs O(connections) per call;
        # with hundreds of concurrent episodes that dominates, so the pool is split into small
        # shards and each request goes to the least busy one. A given transport is not cloned.
        shards = 1 if transport is not None else max(1, math.ceil(max_connections / _SHARD_SIZE))
        per_shard = math.ceil(max_connections / shards)
        # One TLS context for all shards (building one costs ~20 ms); none for plain HTTP.
        tls = ssl.create_default_context() if self.base_url.startswith("https:") else False
        self._shards = [
            httpx2.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                transport=transport,
                # Every request passes its own timeout; this default only guards misuse.
                timeout=httpx2.Timeout(list_timeout_s, connect=connect_timeout_s),
                limits=httpx2.Limits(
                    max_connections=per_shard,
                    max_keepalive_connections=per_shard,
                    keepalive_expiry=30.0,
                ),
                trust_env=False,  # no proxies or netrc picked up behind the caller's back
                follow_redirects=False,
                verify=tls,
            )
            for _ in range(shards)
        ]
        self._busy = [0] * shards
        self._tools: list[dict[str, Any]] | None = None

    @classmethod
    def in_process(cls, app: Any, **kwargs: Any) -> ToolClient:
        """A client that calls an ASGI app (``server.app.create_app(...)``) without sockets.

        Args:
            app: the ASGI app.
            **kwargs: as for the constructor.
        """
        # raise_app_exceptions=False: a server bug reads as HTTP 500, as it would over TCP.
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        return cls(IN_PROCESS_URL, transport=transport, **kwargs)

    async def __aenter__(self) -> ToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        for shard in self._shards:
            await shard.aclose()

    async def list_tools(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` array the server publishes (fetched once, then cached).

        Raises:
            ToolServerUnavailable: the server cannot be reached or answers nonsense.
        """
        if self._tools is None:
            end = wall_seconds() + self.list_timeout_s
            try:
                response = await self._send(
                    "GET", "/tools", None, {}, lambda: end - wall_seconds(), _Attempts()
                )
            except _TimedOut:
                raise self._unavailable(f"no answer within {self.list_timeout_s} s") from None
            payload = _json(response)
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
        body: dict[str, Any] = {}
        if session_id is not None:
            body["session_id"] = session_id
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        response = await self._admin_request("POST", "/sessions", body)
        payload = _json(response)
        if response.status_code == 201 and isinstance(payload, dict):
            return str(payload["session_id"])
        etype, message = _error_fields(
            payload.get("error") if isinstance(payload, dict) else None, response.status_code
        )
        raise ToolError(f"could not create session {session_id!r}: {etype}: {message}")

    async def end_session(self, session_id: str) -> bool:
        """End a session now (its state is closed on the server).

        Returns:
            True if it was live, False if it had already ended, expired or never existed.

        Raises:
            ToolServerUnavailable: the server cannot be reached.
        """
        path = f"/sessions/{quote(session_id, safe='')}"
        response = await self._admin_request("DELETE", path, None)
        if response.status_code in (404, 410):
            return False
        if response.status_code != 200:
            raise ToolError(f"could not end session {session_id!r}: HTTP {response.status_code}")
        return True

    async def _admin_request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> httpx2.Response:
        end = wall_seconds() + self.list_timeout_s
        try:
            return await self._send(
                method, path, body, {}, lambda: end - wall_seconds(), _Attempts()
            )
        except _TimedOut:
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
            return _failed(call_id, name, "deadline_exceeded", msg)
        bounded = math.isfinite(remaining)
        body = {"arguments": arguments, "session_id": session_id}
        real_end = wall_seconds() + min(deadline.timeout_s(), self.max_call_s)
        attempts = _Attempts()

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
        except (_TimedOut, TimeoutError):
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
            result = _failed(call_id, name, "deadline_exceeded", msg, elapsed, attempts.retries)
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
        attempts: _Attempts,
    ) -> ToolResult:
        clock = deadline.clock
        payload = _json(response)
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
        latency = _float(payload.get("latency_s"))
        service = _float(payload.get("service_s"))
        # Modelled work: what a virtual clock charges for the tool's own work (deterministic).
        work = _float(payload.get("work_s")) if clock.kind == "virtual" and status != 504 else 0.0
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
        etype, message = _error_fields(error, status)
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
        attempts: _Attempts,
    ) -> httpx2.Response:
        """Send, retrying transport failures while ``time_left()`` allows.

        A retryable HTTP answer (429, 502, 503) is returned as is once no retry fits, so the
        caller can report it; a connection that cannot be made raises ToolServerUnavailable.
        """
        while True:
            left = max(0.001, time_left())
            attempts.last_error = None  # set again only if this attempt fails
            timeout = httpx2.Timeout(left, connect=min(left, self.connect_timeout_s))
            sent = headers() if callable(headers) else headers
            response: httpx2.Response | None = None
            try:
                response = await self._request(method, path, body, sent, timeout)
            except (httpx2.ReadTimeout, httpx2.WriteTimeout, httpx2.PoolTimeout):
                raise _TimedOut from None
            except httpx2.TransportError as exc:
                attempts.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRY_STATUS:
                    return response
                attempts.last_error = f"HTTP {response.status_code}"
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempts.retries)
            if response is not None:
                delay = max(delay, _retry_after(response))
            # Only retry when, after the wait, a real attempt still fits in the time left.
            if attempts.retries >= self.max_retries or time_left() - delay <= self.margin_s:
                if response is not None:
                    return response
                raise self._unavailable(attempts.last_error, attempts.retries)
            if response is not None:
                payload = _json(response)
                if isinstance(payload, dict):
                    attempts.fault = payload.get("fault") or attempts.fault
                    attempts.virtual_s += _float(payload.get("latency_s"))
            attempts.virtual_s += delay
            attempts.retries += 1
            await _REAL.sleep(delay)

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        timeout: httpx2.Timeout,
    ) -> httpx2.Response:
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._shards[i].request(
                method, path, json=body, headers=headers, timeout=timeout
            )
        finally:
            self._busy[i] -= 1

    def _unavailable(self, why: str, retries: int = 0) -> ToolServerUnavailable:
        tries = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        return ToolServerUnavailable(
            f"tool server at {self.base_url} is unavailable{tries} ({why}). Start it with "
            "`timely tool-server` (or server.app.serve / running_server) and check the URL "
            "and port."
        )


def _failed(
    call_id: str, name: str, etype: str, message: str, charged: float = 0.0, retries: int = 0
) -> ToolResult:
    return ToolResult(
        call_id=call_id,
        name=name,
        content=f"Error ({etype}): {message}",
        error=etype,
        charged_s=charged,
        retries=retries,
    )


def _retry_after(response: httpx2.Response) -> float:
    """Seconds a 429/503 asks the client to wait (0 when absent or not a number)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if out >= 0 else 0.0


def _error_fields(error: Any, status: int) -> tuple[str, str]:
    if isinstance(error, dict):
        return str(error.get("type") or f"http_{status}"), str(error.get("message") or "")
    return f"http_{status}", f"the tool server answered HTTP {status}"
