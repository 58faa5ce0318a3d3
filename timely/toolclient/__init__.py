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

Modules, one job each: :mod:`.protocol` (the ToolBackend protocol and the header names),
:mod:`.transport` (pooled, sharded httpx2 connections), :mod:`.retry` (attempts, backoff,
Retry-After), :mod:`.results` (decoding answers), :mod:`.sessions` (create and end sessions)
and :mod:`.client` (ToolClient: a call, its deadline and what it cost).
"""

from timely.toolclient.client import ToolClient
from timely.toolclient.protocol import CLOCK_HEADER, DEADLINE_HEADER, IN_PROCESS_URL, ToolBackend

__all__ = ["CLOCK_HEADER", "DEADLINE_HEADER", "IN_PROCESS_URL", "ToolBackend", "ToolClient"]
