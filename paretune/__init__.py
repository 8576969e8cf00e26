"""paretune: one Optuna study over every way to make a fine-tuned model smaller and faster."""

from __future__ import annotations

from paretune.errors import ConfigError, ParetuneError, TrialFailed

__version__ = "0.1.0"

__all__ = ["ConfigError", "ParetuneError", "TrialFailed", "__version__"]
