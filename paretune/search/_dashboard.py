"""``paretune dashboard``: optuna-dashboard, as it is, on the study storage.

Each paretune trial already carries what the dashboard shows: its searched knobs as Optuna
params, every knob in the ``params`` user attribute, every measured metric and the failure
reason (``error``) and a one-line ``summary`` of its effective settings as user
attributes, its constraint values where optuna-dashboard reads them; the study names its
objectives with ``set_metric_names`` and holds the recorded hypervolume history as a user
attribute.
"""

from __future__ import annotations

import ipaddress
import sys

from paretune.errors import ConfigError

__all__ = ["serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on ``storage`` until Ctrl-C."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise ConfigError(
            "paretune dashboard needs optuna-dashboard: pip install 'paretune[dashboard]' "
            "(or pip install optuna-dashboard)."
        ) from None
    from paretune.search._storage import mask_url, open_storage

    if not 0 < port < 65536:
        raise ConfigError(f"`0 < --port < 65536` must hold, but got {port}.")
    store = open_storage(storage, create=False, what="--storage")  # creates nothing
    if not _is_loopback(host):
        print(f"paretune: warning: serving on {host}: anyone who reaches it can read, rename "
              "and delete studies in this storage.", file=sys.stderr)
    print(f"paretune: optuna-dashboard on http://{host}:{port}/dashboard for "
          f"{mask_url(storage)} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        run_server(store, host=host, port=port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port."
        ) from None
