"""The one exception hierarchy of paretune."""

from __future__ import annotations

__all__ = ["ParetuneError", "ConfigError", "TrialFailed", "TrialStopped"]


class ParetuneError(Exception):
    """Base class of every error paretune raises on purpose."""


class ConfigError(ParetuneError, ValueError):
    """Bad input from the user: a config key, a knob, a path, a CLI argument.

    The message is one line that names the input, the rule and the fix.
    """


class TrialFailed(ParetuneError):
    """A trial cannot produce a result (NaN loss, an impossible combination, ...).

    The engine records the trial as FAIL with this message; the study goes on.
    """


class TrialStopped(ParetuneError):
    """A trial that cannot reach the front, stopped early (near chance, or dominated by the
    front at its known cost). The engine records it as PRUNED with this reason."""
