"""One vocabulary of errors. Each message says what to do next."""

from __future__ import annotations


class TimelyError(Exception):
    """Base class of every error Timely Machine raises on purpose."""


class ConfigError(TimelyError, ValueError):
    """A configuration value or override is wrong."""


class PolicyError(TimelyError):
    """A policy (model backend) failed to produce a completion."""


class ToolError(TimelyError):
    """A tool call failed in a way the episode cannot turn into an observation."""


class ToolServerUnavailable(ToolError):
    """The tool server could not be reached or stopped answering."""


class TaskError(TimelyError):
    """A task was asked for something it cannot do (unknown id, bad seed, ...)."""


class TrainingDataError(TimelyError, ValueError):
    """A trajectory cannot be turned into training data (e.g. it has no token records)."""


class BudgetExceeded(TimelyError):
    """A call would run past the episode's budget."""


class RegistryError(TimelyError, KeyError):
    """An unknown name was looked up in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
