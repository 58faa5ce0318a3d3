"""The policy contract: ``async generate(messages, tools, *, deadline) -> Completion``.

A policy is any model backend. The loop hands it the conversation so far (OpenAI-shaped
messages), the OpenAI ``tools`` array, and a :class:`Deadline`; it returns a
:class:`~timely.types.Completion` with text, parsed tool calls, token counts and timing. Policies
never charge the clock: the loop does, from measured time (wall) or token counts (virtual).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from timely.clock import Clock
from timely.errors import ConfigError
from timely.extras import require_extra
from timely.registry import Registry
from timely.types import Completion, Message

if TYPE_CHECKING:
    from timely.task import Task

# In virtual time a call's real duration is not charged, so an HTTP backend gets at least this
# long in real seconds before it is abandoned.
VIRTUAL_MIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Deadline:
    """When a model call must be done, on the episode's clock.

    Attributes:
        at: clock time after which the call is useless.
        clock: the episode clock (``remaining()`` reads it).
        max_new_tokens: a cap derived from the remaining budget and the speed profile, or None.
    """

    at: float
    clock: Clock
    max_new_tokens: int | None = None

    def remaining(self) -> float:
        return self.at - self.clock.now()

    def timeout_s(self) -> float:
        """Real seconds a backend may wait for this call (HTTP timeouts, ``max_time``)."""
        left = max(0.001, self.remaining())
        return left if self.clock.kind == "wall" else max(left, VIRTUAL_MIN_TIMEOUT_S)


@runtime_checkable
class Policy(Protocol):
    """Anything that can take a turn in the conversation."""

    name: str

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion: ...


def bind_policy(policy: Policy, task: Task) -> Policy:
    """Give policies that need the task (scripted baselines) a per-episode instance."""
    bind = getattr(policy, "bind", None)
    return bind(task) if callable(bind) else policy


PolicyFactory = Callable[..., Policy]

# Keyed by the prefix of a policy spec: "scripted:oracle", "hf:smollm2-135m", "openai:MODEL".
POLICY_BACKENDS: Registry[PolicyFactory] = Registry("policy backend", "timely.policies")


def register_backend(prefix: str, help: str = ""):
    return POLICY_BACKENDS.register(prefix, help=help)


PolicyCheck = Callable[..., object]
# Prefix -> a cheap validation of (name, **options) that loads nothing (see check_policy).
_CHECKS: dict[str, PolicyCheck] = {}


def register_check(prefix: str) -> Callable[[PolicyCheck], PolicyCheck]:
    """Decorator: the fast check of backend ``prefix``'s specs, ``check(name, **options)``.

    It raises what building the policy would (unknown option, missing model) without loading
    anything, so ``timely eval`` can refuse a mistyped policy before any episode runs.
    """

    def deco(check: PolicyCheck) -> PolicyCheck:
        _CHECKS[prefix] = check
        return check

    return deco


# Built-in backends live in modules imported only when asked for (hf pulls in torch).
_BUILTIN_BACKENDS: dict[str, tuple[str, str]] = {
    "scripted": (
        "timely.policies.scripted",
        "deterministic baselines: scripted:oracle, scripted:budget-aware, scripted:answer-now",
    ),
    "hf": (
        "timely.policies.hf",
        "local transformers model: hf:smollm2-135m (embedded) or hf:/path/to/model",
    ),
    "llamacpp": (
        "timely.policies.llamacpp",
        "llama.cpp on GGUF (fast CPU serving/eval): llamacpp:smollm2-135m, "
        "llamacpp:smollm2-135m-timely or llamacpp:/path/to/model.gguf",
    ),
    "openai": (
        "timely.policies.openai_http",
        "OpenAI-compatible chat completions (vLLM, any API): openai:MODEL --base-url URL",
    ),
    "tracker": (
        "timely.policies.tracker",
        "budget-tracker prompt around any policy (the time left restated before every turn): "
        "tracker:hf:smollm2-135m, tracker:scripted:oracle",
    ),
}


# The optional extra each built-in backend needs (timely/extras.py): checked before its module
# is imported, so a light install says which `pip install` line fixes it.
_BACKEND_EXTRAS: dict[str, str] = {"hf": "hf", "llamacpp": "llamacpp"}


def backend_help() -> dict[str, str]:
    """Prefix -> one-line help, for ``timely policies`` (imports nothing heavy)."""
    out = {prefix: help for prefix, (_, help) in _BUILTIN_BACKENDS.items()}
    for name in POLICY_BACKENDS.names():
        out.setdefault(name, POLICY_BACKENDS.help(name))
    return out


def check_options(backend: str, options: dict[str, Any], known: Iterable[str]) -> None:
    """Reject unknown backend options with a did-you-mean, before anything heavy is loaded.

    Raises:
        ConfigError: an option is not in ``known``.
    """
    known = list(known)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown option {key!r} for policy {backend}.{hint} Known: {', '.join(known)}"
            )


def make_policy(spec: str, **options: Any) -> Policy:
    """Build a policy from a spec such as ``scripted:oracle`` or ``hf:smollm2-135m``.

    Args:
        spec: ``PREFIX:NAME``; the prefix picks the backend.
        **options: backend options (temperature, max_new_tokens, base_url, ...).
    """
    prefix, name = _backend(spec)
    return POLICY_BACKENDS.get(prefix)(name, **options)


def check_policy(spec: str, **options: Any) -> None:
    """Fail now, with a did-you-mean, when ``spec`` and ``options`` cannot make a policy.

    Checks the spec's shape, the backend, and what the backend's registered check covers (its
    options; for ``hf:`` that the model is embedded, a local directory or on the hub, looked up
    once). Nothing is loaded.

    Raises:
        ConfigError: a malformed spec, an unknown backend or option.
        PolicyError: the model does not exist or cannot be reached.
    """
    prefix, name = _backend(spec)
    check = _CHECKS.get(prefix)
    if check is not None:
        check(name, **options)


def _backend(spec: str) -> tuple[str, str]:
    """(prefix, name) of a spec, with the backend's module imported.

    Raises:
        ConfigError: the spec has no prefix, or names no backend (did-you-mean).
        MissingExtra: the backend's optional extra is not installed (the install line).
    """
    prefix, sep, name = spec.partition(":")
    if not sep or not prefix:
        raise ConfigError(
            f"policy spec {spec!r} must look like PREFIX:NAME, e.g. scripted:oracle or "
            "hf:smollm2-135m (`timely policies` lists the backends)"
        )
    if prefix in _BACKEND_EXTRAS:
        require_extra(_BACKEND_EXTRAS[prefix], f"the {prefix}: policy")
    if prefix in _BUILTIN_BACKENDS and prefix not in POLICY_BACKENDS:
        importlib.import_module(_BUILTIN_BACKENDS[prefix][0])
    if prefix not in POLICY_BACKENDS:
        known = list(backend_help())  # the built-ins too, whether imported yet or not
        close = difflib.get_close_matches(prefix, known, n=1)
        hint = f" Did you mean {close[0]}:{name}?" if close else ""
        raise ConfigError(
            f"unknown policy backend {prefix!r} in {spec!r}.{hint} Known backends: "
            f"{', '.join(known)} (`timely policies` describes them)"
        )
    return prefix, name
