"""Sessions: per-episode state, latency and fault streams, with a lifetime.

An episode talks to the server under one ``session_id``. The session owns the episode's RNG
streams (so latencies do not depend on how concurrent episodes interleave) and the state dict
stateful tools keep in ``ctx.state`` (a game, an ML workspace). Sessions are created explicitly
(``POST /sessions``) or implicitly by the first call naming an unseen id (the agent loop does
that); they end by ``DELETE /sessions/{id}`` or by staying idle longer than their TTL, and then
every state value with a ``close()`` method is closed.

A call naming an ended session answers 410 when answering it would silently lose something:
the session was deleted, was created explicitly, or held state. An implicit session with no
state just lapses, and a later call with its id starts afresh. At ``max_live_sessions`` the
least recently used idle implicit sessions without state make room first; only then do new
sessions answer 429.

A session id ``KEY#TAG`` draws its latency and faults from ``KEY`` alone: the agent loop names
each episode ``ep-KEY#NONCE``, a deterministic key and a random nonce, so identical concurrent
episodes never share state while replays still see the same latencies.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timely.clock import wall_seconds
from timely.rng import make_rng
from timely_server.errors import ApiError

log = logging.getLogger("timely.server")

SessionEvent = Callable[[str], None]  # called with "created", "deleted", "expired", "evicted"


def close_state(state: dict[str, Any]) -> None:
    """Free what a session held: every value with a ``close()`` method is closed."""
    for key, value in list(state.items()):
        close = getattr(value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - freeing one resource must not stop the others
                log.exception("closing session state %r failed", key)
    state.clear()


@dataclass(eq=False)
class Session:
    """One live session."""

    id: str
    ttl_s: float
    explicit: bool
    last_used: float
    seed: int
    state: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    ended: bool = False
    _latency_rng: np.random.Generator | None = None
    _fault_rng: np.random.Generator | None = None

    @property
    def stream_key(self) -> str:
        """What the session's random streams derive from: the id up to a ``#``."""
        return self.id.partition("#")[0]

    @property
    def latency_rng(self) -> np.random.Generator:
        if self._latency_rng is None:
            self._latency_rng = make_rng(self.seed, "latency", self.stream_key)
        return self._latency_rng

    @property
    def fault_rng(self) -> np.random.Generator:
        if self._fault_rng is None:
            self._fault_rng = make_rng(self.seed, "faults", self.stream_key)
        return self._fault_rng

    def expires_in(self, now: float) -> float:
        return max(0.0, self.last_used + self.ttl_s - now)


class SessionStore:
    """The live sessions of one server, and the ids of recently ended ones.

    Args:
        seed: the server seed; a session's streams derive from it and the session id.
        ttl_s: default idle lifetime.
        max_live: live sessions at most.
        remember_ended: ended ids remembered (to answer 410), oldest forgotten first.
        sweep_s: least seconds between two sweeps for expired sessions.
        now: the time source (wall seconds; tests pass a fake).
        on_event: told of every session created or ended (for metrics).
    """

    def __init__(
        self,
        *,
        seed: int,
        ttl_s: float,
        max_live: int,
        remember_ended: int,
        sweep_s: float,
        now: Callable[[], float] = wall_seconds,
        on_event: SessionEvent | None = None,
    ) -> None:
        self.seed, self.ttl_s, self.max_live = seed, ttl_s, max_live
        self.remember_ended, self.sweep_s = remember_ended, sweep_s
        self._now = now
        self._on_event = on_event or (lambda kind: None)
        self._live: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._ended: OrderedDict[str, str] = OrderedDict()  # id -> "deleted" | "expired"
        self._last_sweep = now()

    @property
    def live(self) -> int:
        """Number of live sessions."""
        return len(self._live)

    def get(self, session_id: str) -> Session | None:
        """The live session of that id, without touching it."""
        return self._live.get(session_id)

    # -- calls ---------------------------------------------------------------------------------
    def acquire(self, session_id: str) -> Session:
        """The session a call runs in, created on first use; pair with :meth:`release`.

        Raises:
            ApiError: 410 ``session_expired`` for an ended session, 429 ``too_many_sessions``.
        """
        now = self._now()
        self.maybe_sweep(now)
        session = self._live.get(session_id)
        if session is not None and self._is_expired(session, now):
            self._expire(session)
            session = None
        if session is None:
            self._check_not_ended(session_id)
            session = self._admit(session_id, self.ttl_s, explicit=False, now=now)
        else:
            self._live.move_to_end(session_id)
        session.last_used = now
        session.in_flight += 1
        return session

    def release(self, session: Session) -> None:
        """A call in ``session`` finished: its idle time starts now."""
        session.in_flight -= 1
        session.last_used = self._now()
        if session.ended and session.in_flight == 0:
            close_state(session.state)  # it was ended while this call ran

    # -- explicit lifecycle --------------------------------------------------------------------
    def create(self, session_id: str | None = None, ttl_s: float | None = None) -> Session:
        """Create a session (an id is generated when None); an ended id may be created again.

        Raises:
            ApiError: 409 ``session_exists`` for a live id, 429 ``too_many_sessions``.
        """
        now = self._now()
        self.maybe_sweep(now)
        if session_id is None:
            session_id = f"s-{uuid.uuid4().hex}"
        existing = self._live.get(session_id)
        if existing is not None and self._is_expired(existing, now):
            self._expire(existing)
        elif existing is not None:
            raise ApiError(
                409,
                "session_exists",
                f"session {session_id!r} is live; end it with DELETE /sessions/{session_id} "
                "first, or use another id",
            )
        self._ended.pop(session_id, None)
        return self._admit(session_id, ttl_s or self.ttl_s, explicit=True, now=now)

    def lookup(self, session_id: str) -> Session:
        """The live session of that id (expiring it first if its time is up).

        Raises:
            ApiError: 404 ``unknown_session``, 410 ``session_expired`` when it has ended.
        """
        session = self._live.get(session_id)
        if session is not None and self._is_expired(session, self._now()):
            self._expire(session)
            session = None
        if session is None:
            self._check_not_ended(session_id)
            raise ApiError(
                404,
                "unknown_session",
                f"there is no session {session_id!r}; create it with POST /sessions",
            )
        return session

    def end(self, session_id: str) -> None:
        """End a session now and free its state (after a call still running in it).

        Raises:
            ApiError: 404 ``unknown_session``, 410 ``session_expired`` when already ended.
        """
        self._finish(self.lookup(session_id), "deleted", remember=True)

    def sweep(self, now: float | None = None) -> int:
        """Expire every idle session past its TTL; returns how many ended."""
        now = self._now() if now is None else now
        self._last_sweep = now
        expired = [s for s in self._live.values() if self._is_expired(s, now)]
        for session in expired:
            self._expire(session)
        return len(expired)

    def maybe_sweep(self, now: float | None = None) -> None:
        """Sweep when the last sweep is at least ``sweep_s`` old (cheap to call often)."""
        now = self._now() if now is None else now
        if now - self._last_sweep >= self.sweep_s:
            self.sweep(now)

    def close_all(self) -> None:
        """End every session (server shutdown)."""
        for session in list(self._live.values()):
            self._finish(session, "shutdown", remember=False)

    # -- internals -----------------------------------------------------------------------------
    def _is_expired(self, session: Session, now: float) -> bool:
        return session.in_flight == 0 and now - session.last_used > session.ttl_s

    def _expire(self, session: Session) -> None:
        # Remember (answer 410 later) only when a later call would otherwise lose something.
        remember = session.explicit or bool(session.state)
        self._finish(session, "expired", remember=remember)

    def _finish(self, session: Session, reason: str, *, remember: bool) -> None:
        self._live.pop(session.id, None)
        session.ended = True
        if remember:
            self._ended[session.id] = reason
            self._ended.move_to_end(session.id)
            while len(self._ended) > self.remember_ended:
                self._ended.popitem(last=False)
        if session.in_flight == 0:
            close_state(session.state)
        self._on_event(reason)

    def _check_not_ended(self, session_id: str) -> None:
        reason = self._ended.get(session_id)
        if reason is not None:
            how = "was ended" if reason == "deleted" else "expired after being idle too long"
            raise ApiError(
                410,
                "session_expired",
                f"session {session_id!r} {how}; its state is gone. Start a new episode, or "
                "create the session again with POST /sessions",
            )

    def _admit(self, session_id: str, ttl_s: float, *, explicit: bool, now: float) -> Session:
        if len(self._live) >= self.max_live:
            self.sweep(now)
        if len(self._live) >= self.max_live:
            self._evict_lapsed()
        if len(self._live) >= self.max_live:
            idle = [s.expires_in(now) for s in self._live.values() if not s.in_flight]
            soonest = min(idle, default=self.ttl_s)
            retry = str(max(1, min(3600, math.ceil(soonest))))
            raise ApiError(
                429,
                "too_many_sessions",
                f"{self.max_live} sessions are live (max_live_sessions); end finished ones with "
                "DELETE /sessions/{id} or retry later",
                headers={"Retry-After": retry},
            )
        session = Session(session_id, ttl_s, explicit, now, self.seed)
        self._live[session_id] = session
        self._on_event("created")
        return session

    def _evict_lapsed(self) -> None:
        """Make room by dropping idle implicit sessions without state, least recent first."""
        room = len(self._live) - self.max_live + 1
        victims = []
        for session in self._live.values():
            if not session.explicit and not session.state and not session.in_flight:
                victims.append(session)
                if len(victims) >= room:
                    break
        for session in victims:
            self._finish(session, "evicted", remember=False)
